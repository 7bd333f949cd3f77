-- 07_logits.sql — from the last hidden state to the next token.
--
-- Logits are inner products with the output layer: the token embeddings wte where it is tied to
-- them (GPT-2, SmolLM2), else lm_head; softmax over the whole vocabulary turns them into
-- probabilities. The vocabulary is read in
-- shares too: share s of N reads its range of wte's pages and answers with what the choice needs
-- (its best logits, its softmax sums, its Gumbel-max candidate, its best `keep` for top-k / top-p);
-- the answers merge into the token that one pass over the whole vocabulary would choose. One
-- backend is one share of every page.

-- How many of the best tokens a step records (gptsql.step_logit), and how many a share keeps for
-- top-p when no top-k bounds them: the nucleus is ranked among them, unless it reaches past them.
CREATE FUNCTION gptsql.recorded_candidates() RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC SELECT 10; END;
CREATE FUNCTION gptsql.nucleus_candidates() RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC SELECT 1000; END;

-- The pages [lo, hi) of the model's output layer that share `share` of `shares` reads: the heap
-- cut into page ranges, read by a TID range scan. A range of token ids read every page and
-- filtered (half the vocabulary cost 0.8x all of it); a share of pages costs its share. Every row
-- lies on one page, so the shares hold each token once, whatever order the rows are in.
CREATE FUNCTION gptsql.vocab_pages(model int, share int, shares int, OUT lo tid, OUT hi tid)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH heap AS (
            SELECT  pg_relation_size(format('gptsql.%I', CASE WHEN m.tied THEN 'wte_' ELSE 'lm_head_' END || model)::regclass)
                    / current_setting('block_size')::int AS pages
            FROM    gptsql.model m
            WHERE   m.id = model
    )
    SELECT  format('(%s,0)', pages * share / shares)::tid,
            format('(%s,0)', CASE WHEN share = shares - 1 THEN 4294967295           -- the last: to the end
                                  ELSE pages * (share + 1) / shares END)::tid
    FROM    heap;
END;

-- The logits of a hidden state over share `share` of `shares` of the vocabulary (all of it by
-- default). float16 models keep wte in the halfvec column h: the query is cast once.
CREATE FUNCTION gptsql.logits(model int, hidden vector, share int DEFAULT 0, shares int DEFAULT 1)
RETURNS TABLE (token int, logit float8)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH query AS (
            SELECT  hidden AS hv, hidden::halfvec AS hh
    )                                   -- the bounds as scalars: a TID range scan reads only the share's pages
    SELECT  wte.token, coalesce(inner_product(query.hv, wte.w), inner_product(query.hh, wte.h))
    FROM    query, gptsql.wte
    WHERE   wte.model_id = model
      AND   wte.ctid >= (SELECT p.lo FROM gptsql.vocab_pages(model, share, shares) AS p)
      AND   wte.ctid < (SELECT p.hi FROM gptsql.vocab_pages(model, share, shares) AS p)
      AND   (SELECT m.tied FROM gptsql.model m WHERE m.id = model)
    UNION ALL
    SELECT  out.token, coalesce(inner_product(query.hv, out.w), inner_product(query.hh, out.h))
    FROM    query, gptsql.lm_head out
    WHERE   out.model_id = model
      AND   out.ctid >= (SELECT p.lo FROM gptsql.vocab_pages(model, share, shares) AS p)
      AND   out.ctid < (SELECT p.hi FROM gptsql.vocab_pages(model, share, shares) AS p)
      AND   NOT (SELECT m.tied FROM gptsql.model m WHERE m.id = model);
END;

-- The logit of one token after a hidden state: its row of the output layer alone.
CREATE FUNCTION gptsql.logit_of(model int, hidden vector, token int)
RETURNS float8
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  coalesce(inner_product(hidden, o.w), inner_product(hidden::halfvec, o.h))
    FROM    (SELECT wte.w, wte.h FROM gptsql.wte
             WHERE  wte.model_id = model AND wte.token = logit_of.token
               AND  (SELECT m.tied FROM gptsql.model m WHERE m.id = model)
             UNION ALL
             SELECT out.w, out.h FROM gptsql.lm_head out
             WHERE  out.model_id = model AND out.token = logit_of.token
               AND  NOT (SELECT m.tied FROM gptsql.model m WHERE m.id = model)) AS o;
END;

-- A share's answer for one hidden state: its best logits (recorded_candidates of them), their peak,
-- its softmax sums relative to that peak (plain, and at the temperature when sampling), its
-- Gumbel-max candidate (argmax of logit / T + G, G a hash of u and the token), and its `keep` best
-- for top-k / top-p (all when NULL, none when 0): the merged shares' best hold the whole
-- vocabulary's.
CREATE TYPE gptsql.vocab_answer AS (
    top_tokens  int[],
    top_logits  float8[],
    peak        float8,
    z           float8,
    mass        float8,
    g_token     int,
    g_logit     float8,
    g_key       float8,
    cand_tokens int[],
    cand_logits float8[]
);

-- A uniform number in [0, 1) for a seed and a place: the same seed draws the same text, whatever
-- else runs at the same time.
CREATE FUNCTION gptsql.uniform(seed bigint, place int)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT ('x' || substr(md5(seed::text || ':' || place::text), 1, 13))::bit(52)::bigint / 4503599627370496.0;
END;

-- A uniform number in (0, 1) for each token of a draw: a hash of the token and the draw's own
-- uniform u, so one u (from the seed and the place) decides the whole draw.
CREATE FUNCTION gptsql.token_uniform(u float8, token int)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT  (((hashint8extended(token, (u * 4503599627370496)::bigint) >> 11) & 9007199254740991)::float8 + 0.5)
            / 9007199254740992;
END;

CREATE FUNCTION gptsql.vocab_share(model int, hidden vector, share int, shares int,
                                   temperature float8, u float8, keep int)
RETURNS gptsql.vocab_answer
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH logits AS MATERIALIZED (
            SELECT  l.token, l.logit FROM gptsql.logits(model, hidden, share, shares) AS l
    ), best AS MATERIALIZED (
            SELECT  token, logit FROM logits ORDER BY logit DESC, token LIMIT gptsql.recorded_candidates()
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
    ), gumbel AS (                      -- this share's argmax of logit / T + G
            SELECT  token, logit, logit / temperature - ln(-ln(gptsql.token_uniform(u, token))) AS key
            FROM    logits
            WHERE   temperature > 0
            ORDER BY key DESC, token
            LIMIT   1
    )
    SELECT  ROW((SELECT array_agg(token ORDER BY logit DESC, token) FROM best),
                (SELECT array_agg(logit ORDER BY logit DESC, token) FROM best),
                peak.top, total.z, (SELECT mass FROM tempered WHERE temperature > 0),
                (SELECT token FROM gumbel), (SELECT logit FROM gumbel), (SELECT key FROM gumbel),
                (SELECT array_agg(token) FROM candidates), (SELECT array_agg(logit) FROM candidates))::gptsql.vocab_answer
    FROM    peak, total;
END;

-- The answers of every share of the vocabulary for a hidden state: the session's other backends
-- read theirs while this one reads share 0 (10_shares.sql).
CREATE FUNCTION gptsql.vocab_shares(model int, hidden vector, shares int, temperature float8, u float8, keep int)
RETURNS gptsql.vocab_answer[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    answers gptsql.vocab_answer[];
BEGIN
    IF shares > 1 THEN
        PERFORM gptsql.send_shares(shares, format('SELECT gptsql.vocab_share(%s, %L, %%s, %s, %s, %s, %s)',
                                                  model, hidden, shares, temperature, u, coalesce(keep::text, 'NULL')));
    END IF;
    answers := ARRAY[gptsql.vocab_share(model, hidden, 0, shares, temperature, u, keep)];
    RETURN answers || gptsql.gather_answers(shares);
END
$$;

-- The shares' answers in one: the best recorded_candidates of their best with their probability
-- under the whole vocabulary's softmax (each share's sum moved to the common peak), the Gumbel-max
-- candidate with the largest key, every kept candidate, and the whole vocabulary's softmax sum at
-- the temperature. What one answer over every page would say.
CREATE FUNCTION gptsql.merge_answers(answers gptsql.vocab_answer[], temperature float8,
                                     OUT top_tokens int[], OUT top_logits float8[], OUT top_probabilities float8[],
                                     OUT peak float8, OUT z float8, OUT mass float8, OUT g_token int, OUT g_logit float8,
                                     OUT cand_tokens int[], OUT cand_logits float8[])
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    WITH answer AS (
            SELECT  a.* FROM unnest(answers) AS a
    ), common AS (
            SELECT  max(answer.peak) AS top FROM answer
    ), sums AS (
            SELECT  sum(answer.z * gptsql.safe_exp(answer.peak - common.top)) AS z,
                    sum(answer.mass * gptsql.safe_exp((answer.peak - common.top) / greatest(temperature, 1e-12))) AS mass
            FROM    answer, common
    ), best AS (
            SELECT  b.token, b.logit
            FROM    answer, unnest(answer.top_tokens, answer.top_logits) AS b(token, logit)
            ORDER BY b.logit DESC, b.token
            LIMIT   gptsql.recorded_candidates()
    )
    SELECT  (SELECT array_agg(best.token ORDER BY best.logit DESC, best.token) FROM best),
            (SELECT array_agg(best.logit ORDER BY best.logit DESC, best.token) FROM best),
            (SELECT array_agg(gptsql.safe_exp(best.logit - common.top) / sums.z ORDER BY best.logit DESC, best.token)
             FROM best),
            common.top, sums.z, sums.mass,
            (SELECT answer.g_token FROM answer ORDER BY answer.g_key DESC NULLS LAST, answer.g_token LIMIT 1),
            (SELECT answer.g_logit FROM answer ORDER BY answer.g_key DESC NULLS LAST, answer.g_token LIMIT 1),
            (SELECT array_agg(c.token) FROM answer, unnest(answer.cand_tokens, answer.cand_logits) AS c(token, logit)),
            (SELECT array_agg(c.logit) FROM answer, unnest(answer.cand_tokens, answer.cand_logits) AS c(token, logit))
    FROM    common, sums;
END;

-- A share's greedy answers for up to W hidden states, every row of its pages of the output layer read
-- once for all of them: gptsql.vocab_best_W for W in 1, 4, 16, 64 (one text with W inner products
-- a row, written out below). Per place (0 .. W - 1): the answer vocab_share gives at temperature 0
-- (its best logits, their peak, its softmax sum), for a batch's greedy runs. The best are a pass
-- over the logits per place; the sums of every place are one pass.
DO $generate$
DECLARE
    template constant text := $template$
CREATE FUNCTION gptsql.vocab_best_%1$s(model int, x vector[], xh halfvec[], share int, shares int)
RETURNS TABLE (place int, answer gptsql.vocab_answer)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH output_rows AS (               -- the share's pages of the output layer (wte where tied)
            SELECT  wte.token, wte.w, wte.h
            FROM    gptsql.wte
            WHERE   wte.model_id = model
              AND   wte.ctid >= (SELECT p.lo FROM gptsql.vocab_pages(model, share, shares) AS p)
              AND   wte.ctid < (SELECT p.hi FROM gptsql.vocab_pages(model, share, shares) AS p)
              AND   (SELECT m.tied FROM gptsql.model m WHERE m.id = model)
            UNION ALL
            SELECT  out.token, out.w, out.h
            FROM    gptsql.lm_head out
            WHERE   out.model_id = model
              AND   out.ctid >= (SELECT p.lo FROM gptsql.vocab_pages(model, share, shares) AS p)
              AND   out.ctid < (SELECT p.hi FROM gptsql.vocab_pages(model, share, shares) AS p)
              AND   NOT (SELECT m.tied FROM gptsql.model m WHERE m.id = model)
    ), logits AS MATERIALIZED (         -- a token's logit after each place: l[1] .. l[W]
            SELECT  output_rows.token, ARRAY[%2$s] AS l
            FROM    output_rows
    ), best AS MATERIALIZED (           -- per place: its best logits and their peak
            SELECT  p.place, ten.tokens, ten.logits, ten.top
            FROM    generate_series(0, cardinality(x) - 1) AS p(place)
            CROSS JOIN LATERAL (
                    SELECT  array_agg(b.token ORDER BY b.logit DESC, b.token) AS tokens,
                            array_agg(b.logit ORDER BY b.logit DESC, b.token) AS logits, max(b.logit) AS top
                    FROM    (SELECT  logits.token, logits.l[p.place + 1] AS logit
                             FROM    logits
                             ORDER BY logits.l[p.place + 1] DESC, logits.token
                             LIMIT   gptsql.recorded_candidates()) AS b
            ) ten
    ), total AS (                       -- every place's softmax sum below its peak, in one pass: z[1] .. z[W]
            SELECT  ARRAY[%3$s] AS z
            FROM    logits, (SELECT array_agg(best.top ORDER BY best.place) AS top FROM best) AS peak
    )
    SELECT  best.place, ROW(best.tokens, best.logits, best.top, total.z[best.place + 1], NULL, NULL, NULL, NULL, NULL, NULL)::gptsql.vocab_answer
    FROM    best, total
    ORDER BY best.place;
END;
$template$;
    width int;
BEGIN
    FOREACH width IN ARRAY ARRAY[1, 4, 16, 64] LOOP
        EXECUTE format(template, width,
            (SELECT string_agg(format(
                'coalesce(inner_product((SELECT x[%1$s]), output_rows.w), inner_product((SELECT xh[%1$s]), output_rows.h))', k),
                E',\n                                   ') FROM generate_series(1, width) AS k),
            (SELECT string_agg(format('sum(gptsql.safe_exp(logits.l[%1$s] - peak.top[%1$s]))', k), ', ')
             FROM generate_series(1, width) AS k));
    END LOOP;
END
$generate$;

-- A share's greedy answers for hidden states x (see vocab_best_W): per place of x (from 0).
CREATE FUNCTION gptsql.vocab_best(model int, x vector[], share int DEFAULT 0, shares int DEFAULT 1)
RETURNS TABLE (place int, answer gptsql.vocab_answer)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan   -- plans made once
AS $$
DECLARE
    half  boolean := EXISTS (SELECT FROM gptsql.model m WHERE m.id = model AND m.dtype = 'float16');
    batch record;
    xs    vector[];
    xhs   halfvec[];
BEGIN
    FOR batch IN SELECT * FROM gptsql.place_batches(cardinality(x)) LOOP
        xs := x[batch.first + 1 : batch.first + batch.n];
        xhs := CASE WHEN half THEN ARRAY(SELECT v::halfvec FROM unnest(xs) AS v) END;
        CASE batch.width          -- one statement per width (see matmul)
        WHEN 1 THEN RETURN QUERY SELECT batch.first + v.place, v.answer FROM gptsql.vocab_best_1(model, xs, xhs, share, shares) AS v;
        WHEN 4 THEN RETURN QUERY SELECT batch.first + v.place, v.answer FROM gptsql.vocab_best_4(model, xs, xhs, share, shares) AS v;
        WHEN 16 THEN RETURN QUERY SELECT batch.first + v.place, v.answer FROM gptsql.vocab_best_16(model, xs, xhs, share, shares) AS v;
        ELSE RETURN QUERY SELECT batch.first + v.place, v.answer FROM gptsql.vocab_best_64(model, xs, xhs, share, shares) AS v;
        END CASE;
    END LOOP;
END
$$;

-- The greedy choices after hidden states x, every share of the vocabulary read once for all of them
-- (the session's other backends read theirs meanwhile): per place of x (from 1), what choose() gives
-- at temperature 0, and the softmax's peak logit and sum relative to it (a token's log-probability
-- is its logit - peak - ln z: what scoring takes).
CREATE FUNCTION gptsql.choose_greedy(model int, x vector[], shares int)
RETURNS TABLE (n int, token int, probability float8, logit float8,
               top_tokens int[], top_probabilities float8[], top_logits float8[], peak float8, z float8)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF shares > 1 THEN
        PERFORM gptsql.send_shares(shares, format('SELECT place, answer FROM gptsql.vocab_best(%s, %L, %%s, %s)',
                                                  model, x, shares));
    END IF;
    RETURN QUERY
        WITH answers AS (
                SELECT  v.place, v.answer FROM gptsql.vocab_best(model, x, 0, shares) AS v
                UNION ALL
                SELECT  t.place, t.answer
                FROM    generate_series(1, shares - 1) AS s
                CROSS JOIN LATERAL dblink_get_result(gptsql.share_connection(s.s)) AS t(place int, answer gptsql.vocab_answer)
        )
        SELECT  g.place + 1, mm.top_tokens[1], mm.top_probabilities[1], mm.top_logits[1],
                mm.top_tokens, mm.top_probabilities, mm.top_logits, mm.peak, mm.z
        FROM    (SELECT answers.place, array_agg(answers.answer) AS all_answers FROM answers GROUP BY answers.place) AS g
        CROSS JOIN LATERAL gptsql.merge_answers(g.all_answers, 0) AS mm
        ORDER BY g.place;
    PERFORM * FROM generate_series(1, shares - 1) AS s,
                   dblink_get_result(gptsql.share_connection(s.s)) AS t(answer text);
END
$$;

-- top-k / top-p among candidates (token, logit arrays), given the whole vocabulary's softmax sum at
-- the temperature relative to the top logit (`total`, the top logit among the candidates): logits /
-- temperature cut to the top_k (0: all) and to the smallest set whose probability reaches top_p,
-- and u picks from what is left by its cumulative probability. Only the nucleus_candidates best are
-- ranked unless the nucleus reaches past them; with candidates that are not every token
-- (complete = false), a nucleus they do not hold gives no token: the caller then reads them all.
CREATE FUNCTION gptsql.choose_among(tokens int[], logits float8[], temperature float8, top_k int,
                                    top_p float8, u float8, total float8, complete boolean,
                                    OUT token int, OUT logit float8)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH logits AS MATERIALIZED (
            SELECT  t AS token, l AS logit FROM unnest(tokens, logits) AS x(t, l)
    ), peak AS (
            SELECT  max(logit) AS top FROM logits
    ), ranked AS (                      -- the top_k; without one, the nucleus_candidates best
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)) AS e
            FROM    (SELECT  token, logit
                     FROM    logits
                     ORDER BY logit DESC, token
                     LIMIT   CASE WHEN top_k > 0 THEN top_k ELSE gptsql.nucleus_candidates() END) AS best_ones, peak
    ), enough AS (                      -- do the ranked ones hold the nucleus (top_p of the mass)?
            SELECT  top_k > 0 OR sum(ranked.e) / total >= top_p AS held
            FROM    ranked
    ), tempered AS (                    -- the top_k (renormalized over them), or every token the
                                        -- nucleus can reach (as shares of the whole vocabulary)
            SELECT  token, logit, e, sum(e) OVER () AS z
            FROM    ranked
            WHERE   top_k > 0
            UNION ALL
            SELECT  token, logit, e, total
            FROM    ranked
            WHERE   top_k = 0 AND (SELECT held FROM enough)
            UNION ALL
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)), total
            FROM    logits, peak
            WHERE   top_k = 0 AND NOT (SELECT held FROM enough)
    ), nucleus AS (                     -- cumulative probability, most probable first
            SELECT  token, logit, e / z AS p,
                    sum(e) OVER (ORDER BY e DESC, token ROWS UNBOUNDED PRECEDING) / z AS cum
            FROM    tempered
    ), kept AS (                        -- top-p: keep tokens until the mass before them reaches top_p
            SELECT  token, logit, p FROM nucleus WHERE cum - p < top_p
    ), drawn AS (
            SELECT  token, logit,
                    sum(p) OVER (ORDER BY p DESC, token ROWS UNBOUNDED PRECEDING) / sum(p) OVER () AS cum
            FROM    kept
    )
    SELECT  token, logit                -- the first token whose cumulative probability passes u
    FROM    drawn
    WHERE   complete OR (SELECT held FROM enough)
    ORDER BY CASE WHEN cum >= u THEN cum ELSE 2 - cum END
    LIMIT   1;
END;

-- Choose the next token after a hidden state, reading the vocabulary in `shares` shares.
-- Temperature 0 is greedy (ties go to the lower id, as argmax does). Sampling from the whole
-- vocabulary (no top_k, no top_p) takes the Gumbel-max trick: the token with the largest
-- logit / temperature + Gumbel noise is a draw from softmax(logits / temperature), with one pass
-- over the logits and no sort. With top_k or top_p, the shares keep their best and choose_among()
-- draws from them. Also returns the recorded_candidates most probable tokens, for the run's record.
CREATE FUNCTION gptsql.choose(model int, hidden vector, temperature float8, top_k int, top_p float8, u float8,
                              shares int DEFAULT 1)
RETURNS TABLE (token int, probability float8, logit float8,
               top_tokens int[], top_probabilities float8[], top_logits float8[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    truncated boolean := temperature > 0 AND (top_k > 0 OR top_p < 1);
    merged    record;
    drawn     record;
BEGIN
    SELECT * INTO merged
    FROM   gptsql.merge_answers(gptsql.vocab_shares(model, hidden, shares, temperature, u,
                                                    CASE WHEN truncated THEN coalesce(nullif(top_k, 0), gptsql.nucleus_candidates())
                                                         ELSE 0 END),
                                temperature);
    IF temperature = 0 THEN
        token := merged.top_tokens[1];
        logit := merged.top_logits[1];
    ELSIF NOT truncated THEN
        token := merged.g_token;
        logit := merged.g_logit;
    ELSE
        SELECT * INTO drawn
        FROM   gptsql.choose_among(merged.cand_tokens, merged.cand_logits, temperature, top_k, top_p, u, merged.mass, false);
        IF drawn.token IS NULL THEN     -- a nucleus wider than the candidates: every logit, then again
            SELECT c.* INTO drawn
            FROM   gptsql.merge_answers(gptsql.vocab_shares(model, hidden, shares, temperature, u, NULL), temperature) AS m,
                   gptsql.choose_among(m.cand_tokens, m.cand_logits, temperature, top_k, top_p, u, merged.mass, true) AS c;
        END IF;
        token := drawn.token;
        logit := drawn.logit;
    END IF;
    probability := gptsql.safe_exp(logit - merged.peak) / merged.z;
    top_tokens := merged.top_tokens;
    top_probabilities := merged.top_probabilities;
    top_logits := merged.top_logits;
    RETURN NEXT;
END
$$;

-- The top_n most probable next tokens after a hidden state, with their probability under the
-- softmax over the whole vocabulary, reading it in `shares` shares.
CREATE FUNCTION gptsql.distribution(model int, hidden vector, top_n int, shares int DEFAULT 1)
RETURNS TABLE (rank int, token int, probability float8, logit float8)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH merged AS (
            SELECT  m.* FROM gptsql.merge_answers(gptsql.vocab_shares(model, hidden, shares, 0, 0.5, top_n), 0) AS m
    ), best AS (
            SELECT  c.token, c.logit
            FROM    merged, unnest(merged.cand_tokens, merged.cand_logits) AS c(token, logit)
            ORDER BY c.logit DESC, c.token
            LIMIT   top_n
    )
    SELECT  (row_number() OVER (ORDER BY best.logit DESC, best.token))::int, best.token,
            gptsql.safe_exp(best.logit - merged.peak) / merged.z, best.logit
    FROM    best, merged
    ORDER BY best.logit DESC, best.token;
END;
