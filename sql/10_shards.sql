-- 10_shards.sql — one generation over several backends (tensor parallelism, driver/workers.py).
--
-- Each worker owns a share of every block: heads [head_lo, head_hi) (their q, k, v units of c_attn,
-- their KV-cache rows, their columns of the attention projection), the MLP's unit groups
-- [grp_lo, grp_hi) (n_embd units of c_fc each, and the parts of c_proj's rows that read them), and
-- a range of the token embeddings' pages (vocab_pages). A share returns one partial n_embd vector
-- per place; the next call of every worker sums all workers' partials onto the residual stream:
--
--   h  = resid + Σ partials(mlp of the block before)     a  = h + Σ partials(attention)
--
-- Partials travel as one flat vector[] (worker-major, place-minor). Python only moves those bytes.
-- The lead worker (lead = true) adds the projection's bias and records the residual stream.

-- Σ of the workers' partial vectors per place: partials[w * places + p] is worker w's for place p.
CREATE OR REPLACE FUNCTION gptsql.sum_partials(resid vector[], partials vector[])
RETURNS vector[]
LANGUAGE sql IMMUTABLE AS $$
    WITH summed AS (
            SELECT  (n::int - 1) % cardinality(resid) AS place, sum(p) AS s
            FROM    unnest(partials) WITH ORDINALITY AS t(p, n)
            GROUP BY 1
    )
    SELECT  CASE WHEN partials IS NULL THEN resid
                 ELSE gptsql.add_all(resid, ARRAY(SELECT s FROM summed ORDER BY place)) END
$$;

-- y = x W + b over a share of a layer's units: the groups in `grps` (an index condition: a share
-- reads only its own rows), reading the
-- input parts part_lo .. part_lo + n_parts - 1 (x holds n_parts vectors per place, place-major).
-- matmul() with ranges; a unit's bias sits on its part 0 row, so it is counted by the share holding it.
CREATE OR REPLACE FUNCTION gptsql.matmul_share(model int, block int, layer text, x vector[], grps int[],
                                               part_lo int DEFAULT 0, n_parts int DEFAULT 1,
                                               activation text DEFAULT NULL)
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE sql STABLE AS $$
    WITH input AS (
            SELECT  (n::int - 1) / n_parts AS place, part_lo + (n::int - 1) % n_parts AS part, xv, xv::halfvec AS xh
            FROM    unnest(x) WITH ORDINALITY AS t(xv, n)
    ), partials AS (
            SELECT  input.place, unit.grp, unit.y
            FROM    input
            CROSS JOIN LATERAL (
                    SELECT  dot.grp,
                            array_agg((CASE activation WHEN 'gelu' THEN gptsql.gelu(dot.a) ELSE dot.a END)::real
                                      ORDER BY dot.idx)::vector AS y
                    FROM    (SELECT  w.grp, w.idx,
                                     coalesce(inner_product(input.xv, w.w), inner_product(input.xh, w.h)) + w.bias AS a
                             FROM    gptsql.linear w
                             WHERE   w.model_id = model AND w.name = layer AND w.block = matmul_share.block
                               AND   w.part = input.part AND w.grp = ANY (grps)
                             ORDER BY w.grp, w.idx
                             OFFSET  0) AS dot
                    GROUP BY dot.grp
            ) unit
    )
    SELECT  place, grp, sum(y)
    FROM    partials
    GROUP BY place, grp
$$;

-- The projection's rows cut to the columns of heads [head_lo, head_hi), made once per model and
-- split (gptsql.projection_share): a share then reads half the bytes (two workers) and takes no
-- subvector of every row at every step (0.6-0.9 ms a block instead of 1.2-1.4 on the 124M shape).
-- Rows made by a concurrent call of the same split are kept (ON CONFLICT).
CREATE OR REPLACE FUNCTION gptsql.prepare_projection_share(model int, head_lo int, head_hi int)
RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO gptsql.projection_share (model_id, head_lo, head_hi, block, grp, idx, w, h, bias)
    SELECT  model, head_lo, head_hi, w.block, w.grp, w.idx,
            subvector(w.w, head_lo * (m.n_embd / m.n_head) + 1, (head_hi - head_lo) * (m.n_embd / m.n_head)),
            subvector(w.h, head_lo * (m.n_embd / m.n_head) + 1, (head_hi - head_lo) * (m.n_embd / m.n_head)),
            w.bias
    FROM    gptsql.model m
    JOIN    gptsql.linear w ON w.model_id = m.id AND w.name = 'attn_proj' AND w.part = 0
    WHERE   m.id = model
      AND   NOT EXISTS (SELECT FROM gptsql.projection_share s
                        WHERE s.model_id = model AND s.head_lo = prepare_projection_share.head_lo
                          AND s.head_hi = prepare_projection_share.head_hi)
    ON CONFLICT DO NOTHING
$$;

-- Attention over the heads [head_lo, head_hi) of the new places (normalized inputs x): their q, k,
-- v into the KV cache, softmax over their keys, then their columns of the projection: one partial
-- n_embd vector per place. The same math as attention(), on a range of heads.
CREATE OR REPLACE FUNCTION gptsql.attention_share(run bigint, model int, block int, start int, x vector[],
                                                  head_lo int, head_hi int, lead boolean)
RETURNS vector[]
LANGUAGE sql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
    WITH config AS (
            SELECT  n_head FROM gptsql.model m WHERE m.id = model
    ), qkv AS (                         -- c_attn's units of these heads: q, k and v
            SELECT  place, grp, y
            FROM    config, gptsql.matmul_share(model, block, 'c_attn', x,
                        ARRAY(SELECT h + kind * config.n_head
                              FROM generate_series(head_lo, head_hi - 1) h, generate_series(0, 2) kind))
    )
    INSERT INTO gptsql.kv_cache (run_id, block, head, place, q, k, v)
    SELECT  run, block, q.grp, q.place + start, q.y, k.y, v.y
    FROM    config
    JOIN    qkv q ON q.grp < config.n_head
    JOIN    qkv k ON k.place = q.place AND k.grp = q.grp + config.n_head
    JOIN    qkv v ON v.place = q.place AND v.grp = q.grp + 2 * config.n_head;

    WITH attended AS (
            SELECT  a.place, a.head, a.z
            FROM    gptsql.attend(run, model, block, start, cardinality(x), head_lo, head_hi) AS a
    ), merged AS (                      -- the share's heads side by side
            SELECT  place, gptsql.concat(z ORDER BY head) AS z, gptsql.concat(z ORDER BY head)::halfvec AS zh
            FROM    attended
            GROUP BY place
    ), projected AS (                   -- their columns of the projection (its rows cut to the share)
            SELECT  merged.place,
                    (SELECT  array_agg((coalesce(inner_product(merged.z, w.w), inner_product(merged.zh, w.h))
                                        + CASE WHEN lead THEN w.bias ELSE 0 END)::real ORDER BY w.grp, w.idx)::vector
                     FROM    gptsql.projection_share w
                     WHERE   w.model_id = model AND w.head_lo = attention_share.head_lo
                       AND   w.head_hi = attention_share.head_hi AND w.block = attention_share.block) AS y
            FROM    merged
    )
    SELECT  array_agg(y ORDER BY place)
    FROM    projected
$$;

-- A block's attention share. resid and partials are the stream before it (the MLP partials of the
-- block before; for block 0, resid is NULL and the tokens are embedded). Returns the summed stream
-- h (the next call's resid) and this share's partial attention output. The lead records the
-- residual row of the block before, now that its after_mlp is known.
CREATE OR REPLACE FUNCTION gptsql.block_attention_share(run bigint, model int, block int, start int,
                                                        tokens int[], resid vector[], partials vector[],
                                                        head_lo int, head_hi int, lead boolean,
                                                        OUT h vector[], OUT partial vector[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    h := gptsql.sum_partials(coalesce(resid, gptsql.embeddings(model, tokens, start)), partials);
    IF lead AND block > 0 THEN
        PERFORM gptsql.record_residual(run, block - 1, start, resid, h);
    END IF;
    partial := gptsql.attention_share(run, model, block, start, gptsql.norm_all(model, 'ln_1', block, h),
                                      head_lo, head_hi, lead);
END
$$;

CREATE OR REPLACE FUNCTION gptsql.record_residual(run bigint, block int, start int, a vector[], h vector[])
RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO gptsql.residual (run_id, block, place, after_attention, after_mlp)
    SELECT  run, block, start + n::int - 1, after_attention, after_mlp
    FROM    unnest(a, h) WITH ORDINALITY AS t(after_attention, after_mlp, n)
    WHERE   (SELECT r.record FROM gptsql.run r WHERE r.id = run)
$$;

-- A block's MLP share: a = resid + Σ attention partials, then c_fc's groups [grp_lo, grp_hi) (GELU)
-- and the parts of c_proj's rows that read them. Returns a and this share's partial output.
CREATE OR REPLACE FUNCTION gptsql.block_mlp_share(model int, block int, resid vector[], partials vector[],
                                                  grp_lo int, grp_hi int,
                                                  OUT a vector[], OUT partial vector[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    a := gptsql.sum_partials(resid, partials);
    partial := (
        WITH hidden AS (
                SELECT  place, grp AS part, y
                FROM    gptsql.matmul_share(model, block, 'c_fc', gptsql.norm_all(model, 'ln_2', block, a),
                                            ARRAY(SELECT generate_series(grp_lo, grp_hi - 1)), 0, 1, 'gelu')
        )
        SELECT  array_agg(y ORDER BY place)
        FROM    gptsql.matmul_share(model, block, 'mlp_proj', ARRAY(SELECT y FROM hidden ORDER BY place, part),
                                    ARRAY[0], grp_lo, grp_hi - grp_lo));   -- its n_embd outputs: one group
END
$$;

-- The pages [lo, hi) of the model's token embeddings that vocabulary share `share` of `shares`
-- reads: the heap cut into page ranges, read by a TID range scan. A range of token ids read every
-- page and filtered (half the vocabulary cost 0.8x all of it); a share of pages costs its share.
-- Every row lies on one page, so the shares hold each token once, whatever order the rows are in.
CREATE OR REPLACE FUNCTION gptsql.vocab_pages(model int, share int, shares int, OUT lo tid, OUT hi tid)
LANGUAGE sql STABLE AS $$
    WITH heap AS (
            SELECT  pg_relation_size(format('gptsql.%I', 'wte_' || model)::regclass)
                    / current_setting('block_size')::int AS pages
    )
    SELECT  format('(%s,0)', pages * share / shares)::tid,
            format('(%s,0)', CASE WHEN share = shares - 1 THEN 4294967295           -- the last: to the end
                                  ELSE pages * (share + 1) / shares END)::tid
    FROM    heap
$$;

-- The vocabulary share `share` of `shares` for the last place's hidden state: its logits, their ten
-- best, their peak, their softmax sums relative to that peak (plain, and at the temperature when
-- sampling), their Gumbel-max candidate, and for top-k / top-p their `keep` best (all when NULL,
-- none when 0): the merged shares' best hold the whole vocabulary's.
DROP FUNCTION IF EXISTS gptsql.vocab_share(int, vector, int, int, float8, float8, int);
CREATE OR REPLACE FUNCTION gptsql.vocab_share(model int, hidden vector, share int, shares int,
                                              temperature float8, u float8, keep int)
RETURNS TABLE (top_tokens int[], top_logits float8[], peak float8, z float8, mass float8, g_token int,
               g_logit float8, g_key float8, cand_tokens int[], cand_logits float8[])
LANGUAGE sql STABLE AS $$
    WITH query AS (
            SELECT  hidden AS hv, hidden::halfvec AS hh
    ), logits AS MATERIALIZED (
            SELECT  wte.token, coalesce(inner_product(query.hv, wte.w), inner_product(query.hh, wte.h)) AS logit
            FROM    query, gptsql.wte
            WHERE   wte.model_id = model
              AND   wte.ctid >= (SELECT lo FROM gptsql.vocab_pages(model, share, shares))
              AND   wte.ctid <  (SELECT hi FROM gptsql.vocab_pages(model, share, shares))
    ), best AS MATERIALIZED (
            SELECT  token, logit FROM logits ORDER BY logit DESC, token LIMIT 10
    ), peak AS (
            SELECT  max(logit) AS top FROM best
    ), total AS (
            SELECT  sum(gptsql.safe_exp(logit - top)) AS z
            FROM    logits, peak
    ), tempered AS (                    -- only read when sampling (greedy skips this pass)
            SELECT  sum(gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12))) AS mass
            FROM    logits, peak
    ), candidates AS (
            SELECT  token, logit FROM logits ORDER BY logit DESC, token LIMIT keep
    ), gumbel AS (                      -- this share's argmax of logit / T + G (the same G as choose())
            SELECT  token, logit, logit / temperature - ln(-ln(gptsql.token_uniform(u, token))) AS key
            FROM    logits
            WHERE   temperature > 0
            ORDER BY key DESC, token
            LIMIT   1
    )
    SELECT  (SELECT array_agg(token ORDER BY logit DESC, token) FROM best),
            (SELECT array_agg(logit ORDER BY logit DESC, token) FROM best),
            peak.top, total.z, (SELECT mass FROM tempered WHERE temperature > 0),
            (SELECT token FROM gumbel), (SELECT logit FROM gumbel), (SELECT key FROM gumbel),
            (SELECT array_agg(token) FROM candidates), (SELECT array_agg(logit) FROM candidates)
    FROM    peak, total
$$;

-- The last stream summed (the lead records the last block's residual row), the last place through
-- ln_f, then this worker's share of the vocabulary.
DROP FUNCTION IF EXISTS gptsql.logits_share(bigint, int, int, vector[], vector[], int, int, boolean, float8, float8, int);
CREATE OR REPLACE FUNCTION gptsql.logits_share(run bigint, model int, start int, resid vector[], partials vector[],
                                               share int, shares int, lead boolean, temperature float8,
                                               u float8, keep int)
RETURNS TABLE (hidden vector, top_tokens int[], top_logits float8[], peak float8, z float8, mass float8,
               g_token int, g_logit float8, g_key float8, cand_tokens int[], cand_logits float8[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m      gptsql.model;
    h      vector[];
    last   vector;
BEGIN
    SELECT * INTO m FROM gptsql.model WHERE gptsql.model.id = logits_share.model;
    h := gptsql.sum_partials(resid, partials);
    IF lead THEN
        PERFORM gptsql.record_residual(run, m.n_layer - 1, start, resid, h);
    END IF;
    SELECT gptsql.layer_norm(h[cardinality(h)], n.gamma, n.beta, m.layer_norm_epsilon) INTO last
    FROM   gptsql.norm n WHERE n.model_id = logits_share.model AND n.name = 'ln_f';
    RETURN QUERY SELECT last, v.* FROM gptsql.vocab_share(logits_share.model, last, share, shares, temperature, u, keep) v;
END
$$;

-- The step's uniform number (as step() draws it), taken before the vocabulary shares need it.
CREATE OR REPLACE FUNCTION gptsql.draw(run bigint, place int)
RETURNS float8
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN r.seed IS NULL THEN random() ELSE gptsql.uniform(r.seed, place) END
    FROM   gptsql.run r WHERE r.id = run
$$;

-- top-k / top-p over the shards' candidates: choose()'s truncated draw, on arrays instead of a scan
-- of wte. `total` is the whole vocabulary's softmax sum at the temperature (relative to the top
-- logit, which is among the candidates). With only the candidates (complete = false), a nucleus
-- they do not hold returns no token: the caller then gathers every logit.
DROP FUNCTION IF EXISTS gptsql.choose_among(int[], float8[], float8, int, float8, float8);
CREATE OR REPLACE FUNCTION gptsql.choose_among(tokens int[], logits float8[], temperature float8, top_k int,
                                               top_p float8, u float8, total float8, complete boolean,
                                               OUT token int, OUT logit float8)
LANGUAGE sql STABLE AS $$
    WITH logits AS MATERIALIZED (
            SELECT  t AS token, l AS logit FROM unnest(tokens, logits) AS x(t, l)
    ), peak AS (
            SELECT  max(logit) AS top FROM logits
    ), mass AS (
            SELECT  total AS z
    ), ranked AS (
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)) AS e
            FROM    (SELECT  token, logit
                     FROM    logits
                     ORDER BY logit DESC, token
                     LIMIT   CASE WHEN top_k > 0 THEN top_k ELSE 1000 END) AS best_ones, peak
    ), enough AS (
            SELECT  top_k > 0 OR sum(ranked.e) / mass.z >= top_p AS held
            FROM    ranked, mass
            GROUP BY mass.z
    ), tempered AS (
            SELECT  token, logit, e, sum(e) OVER () AS z
            FROM    ranked
            WHERE   top_k > 0
            UNION ALL
            SELECT  token, logit, e, mass.z
            FROM    ranked, mass
            WHERE   top_k = 0 AND (SELECT held FROM enough)
            UNION ALL
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)), mass.z
            FROM    logits, peak, mass
            WHERE   top_k = 0 AND NOT (SELECT held FROM enough)
    ), nucleus AS (
            SELECT  token, logit, e / z AS p,
                    sum(e) OVER (ORDER BY e DESC, token ROWS UNBOUNDED PRECEDING) / z AS cum
            FROM    tempered
    ), kept AS (
            SELECT  token, logit, p FROM nucleus WHERE cum - p < top_p
    ), drawn AS (
            SELECT  token, logit,
                    sum(p) OVER (ORDER BY p DESC, token ROWS UNBOUNDED PRECEDING) / sum(p) OVER () AS cum
            FROM    kept
    )
    SELECT  token, logit
    FROM    drawn
    WHERE   complete OR (SELECT held FROM enough)
    ORDER BY CASE WHEN cum >= u THEN cum ELSE 2 - cum END
    LIMIT   1
$$;

-- The shards' answers merged into the step's token (exactly what choose() picks over the whole
-- vocabulary): greedy is the best of the shards' best, Gumbel-max the max of their maxima, the
-- softmax sum the shards' sums moved to the common peak, top-k / top-p drawn among the shards'
-- candidates. Recorded as step() records a token; no row when the candidates were not enough.
DROP FUNCTION IF EXISTS gptsql.choose_shards(bigint, int, float8, float8, int[], float8[], float8[], float8[], int[],
                                             float8[], float8[], int[], float8[]);
CREATE OR REPLACE FUNCTION gptsql.choose_shards(run bigint, place int, u float8, elapsed_ms float8, top_tokens int[],
                                                top_logits float8[], peaks float8[], zs float8[], masses float8[],
                                                g_tokens int[], g_logits float8[], g_keys float8[],
                                                cand_tokens int[], cand_logits float8[], complete boolean)
RETURNS TABLE (token int, bytes bytea, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r     gptsql.run;
    top   float8;
    total float8;
    c     record;
BEGIN
    SELECT * INTO r FROM gptsql.run WHERE gptsql.run.id = choose_shards.run;
    SELECT max(p) INTO top FROM unnest(peaks) AS p;
    SELECT sum(s.z * gptsql.safe_exp(s.p - top)) INTO total FROM unnest(zs, peaks) AS s(z, p);
    IF r.temperature = 0 THEN
        SELECT b.t AS token, b.l AS logit INTO c
        FROM unnest(top_tokens, top_logits) AS b(t, l) ORDER BY b.l DESC, b.t LIMIT 1;
    ELSIF r.top_k = 0 AND r.top_p >= 1 THEN
        SELECT g.t AS token, g.l AS logit INTO c
        FROM unnest(g_tokens, g_logits, g_keys) AS g(t, l, k) ORDER BY g.k DESC, g.t LIMIT 1;
    ELSE
        SELECT * INTO c
        FROM   gptsql.choose_among(cand_tokens, cand_logits, r.temperature, r.top_k, r.top_p, u,
                                   (SELECT sum(s.mass * gptsql.safe_exp((s.p - top) / r.temperature))
                                    FROM unnest(masses, peaks) AS s(mass, p)), complete);
        IF c.token IS NULL THEN
            RETURN;                     -- the candidates do not hold the nucleus: gather them all
        END IF;
    END IF;
    INSERT INTO gptsql.run_token (run_id, place, token, is_prompt, probability, logit, elapsed_ms)
    VALUES (run, place, c.token, false, gptsql.safe_exp(c.logit - top) / total, c.logit, elapsed_ms);
    IF r.record THEN
        INSERT INTO gptsql.step_logit (run_id, place, rank, token, logit, probability)
        SELECT  run, place - 1, row_number() OVER (ORDER BY b.l DESC, b.t), b.t, b.l, gptsql.safe_exp(b.l - top) / total
        FROM    (SELECT * FROM unnest(top_tokens, top_logits) AS b(t, l) ORDER BY b.l DESC, b.t LIMIT 10) b;
    END IF;
    RETURN QUERY
        SELECT c.token, t.bytes, gptsql.safe_exp(c.logit - top) / total, c.logit
        FROM   gptsql.token t
        WHERE  t.model_id = r.model_id AND t.token = c.token;
END
$$;

-- predict() over the shards: the top_n best of the shards' own top_n, with their probability under
-- the whole vocabulary's softmax (the shards' sums moved to the common peak), recorded as predict()
-- records them.
CREATE OR REPLACE FUNCTION gptsql.predict_shards(run bigint, place int, top_n int, tokens int[], logits float8[],
                                                 peaks float8[], zs float8[])
RETURNS TABLE (rank int, token int, piece text, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    top   float8;
    total float8;
BEGIN
    SELECT max(p) INTO top FROM unnest(peaks) AS p;
    SELECT sum(s.z * gptsql.safe_exp(s.p - top)) INTO total FROM unnest(zs, peaks) AS s(z, p);
    INSERT INTO gptsql.step_logit (run_id, place, rank, token, logit, probability)
    SELECT  run, place, row_number() OVER (ORDER BY b.l DESC, b.t), b.t, b.l, gptsql.safe_exp(b.l - top) / total
    FROM    (SELECT * FROM unnest(tokens, logits) AS b(t, l) ORDER BY b.l DESC, b.t LIMIT top_n) b;
    RETURN QUERY
        SELECT  l.rank, l.token, t.piece, l.probability, l.logit
        FROM    gptsql.step_logit l
        JOIN    gptsql.run r ON r.id = l.run_id
        JOIN    gptsql.token t ON t.model_id = r.model_id AND t.token = l.token
        WHERE   l.run_id = predict_shards.run
        ORDER BY l.rank;
END
$$;
