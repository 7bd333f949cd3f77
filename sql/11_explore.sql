-- 11_explore.sql — one place of a recorded run, stage by stage: what the explorer draws.
--
-- A recorded run keeps the residual stream after each half of each block (gptsql.residual), the
-- attention weights (gptsql.attention_row) and the best candidates of each step (gptsql.step_logit).
-- Everything else — a layer norm's mean and variance, a head's queries, keys and values and its
-- scores, the MLP's hidden units, the logits — is computed again here, for the place asked, by the
-- engine's own functions (02..07) from the recorded stream: the input of block b at place p is
-- block b - 1's after_mlp there, or the embeddings for block 0. A finished run's KV cache is gone;
-- the keys and values of the earlier places are computed again the same way.
--
-- The stage functions (explore_embedding, explore_norm, explore_attention, explore_projection,
-- explore_mlp) return rows of one shape, in the model's order:
--   step      the row's order in the stage
--   what      what the row holds
--   at_place  the place it belongs to (a key's place in attention, else the place asked)
--   unit      the hidden unit a row of the MLP's strongest units is about, else NULL
--   value     a number (a mean, a score, a weight), or NULL
--   vals      a vector (n_embd wide, head_dim, n_inner...), or NULL
-- Names follow the model's family: GPT-2's layer norms and GELU, the Llama family's RMS norms,
-- rotated queries and keys, grouped key/value heads and SwiGLU.

-- A recorded run and one of its places, checked: the model's shapes, how many places went through
-- the blocks (the last token chosen is never read back), and the token at the place.
CREATE FUNCTION gptsql.explore_run(run bigint, place int,
                                   OUT model int, OUT family text, OUT n_layer int, OUT n_head int,
                                   OUT n_kv_head int, OUT head_dim int, OUT n_embd int, OUT n_inner int,
                                   OUT mlp_groups int, OUT places int, OUT token int)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r gptsql.run;
    m gptsql.model;
BEGIN
    SELECT * INTO r FROM gptsql.run WHERE id = explore_run.run;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no run %', coalesce(explore_run.run::text, 'NULL')
            USING HINT = 'the runs are listed in gptsql.runs';
    END IF;
    IF NOT r.record THEN
        RAISE EXCEPTION 'run % kept no activations (it ran with record => false)', explore_run.run
            USING HINT = 'run the prompt again with its activations recorded';
    END IF;
    SELECT * INTO m FROM gptsql.model WHERE id = r.model_id;
    SELECT count(*) INTO places FROM gptsql.residual res WHERE res.run_id = explore_run.run AND res.block = 0;
    IF explore_run.place IS NULL OR explore_run.place < 0 OR explore_run.place >= places THEN
        RAISE EXCEPTION 'run % went through the blocks at places 0 to %, not at place %', explore_run.run,
            places - 1, coalesce(explore_run.place::text, 'NULL')
            USING HINT = 'the last token a run chose is never read back: it has no activations';
    END IF;
    SELECT rt.token INTO token FROM gptsql.run_token rt WHERE rt.run_id = explore_run.run AND rt.place = explore_run.place;
    model := m.id;
    family := m.family;
    n_layer := m.n_layer;
    n_head := m.n_head;
    n_kv_head := m.n_kv_head;
    head_dim := m.n_embd / m.n_head;
    n_embd := m.n_embd;
    n_inner := m.n_inner;
    mlp_groups := m.mlp_groups;
END
$$;

-- A block or query head checked against the model's count of them: 0 .. n - 1.
CREATE FUNCTION gptsql.explore_index(what text, value int, n int)
RETURNS int
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF value IS NULL OR value < 0 OR value >= n THEN
        RAISE EXCEPTION 'the model has % 0 to %, not %', what, n - 1, coalesce(value::text, 'NULL');
    END IF;
    RETURN value;
END
$$;

CREATE FUNCTION gptsql.explore_block(model int, block int)
RETURNS int
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT gptsql.explore_index('blocks', block, m.n_layer) FROM gptsql.model m WHERE m.id = model;
END;

CREATE FUNCTION gptsql.explore_head(model int, head int)
RETURNS int
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT gptsql.explore_index('heads', head, m.n_head) FROM gptsql.model m WHERE m.id = model;
END;

-- The residual stream entering block `block` at `places` of a run: the embeddings for block 0,
-- else what block - 1 handed on (after_mlp); block n_layer is what ln_f reads.
CREATE FUNCTION gptsql.explore_input(run bigint, block int, places int[])
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  r.model_id FROM gptsql.run r WHERE r.id = explore_input.run
    ), embedded AS (                    -- block 0: token + position embeddings
            SELECT  gptsql.embeddings(config.model_id,
                        ARRAY(SELECT rt.token
                              FROM   unnest(places) WITH ORDINALITY AS p(place, n)
                              JOIN   gptsql.run_token rt ON rt.run_id = explore_input.run AND rt.place = p.place
                              ORDER BY p.n),
                        explore_input.places) AS h
            FROM    config
            WHERE   explore_input.block = 0
    ), handed_on AS (                   -- later blocks: the previous block's output
            SELECT  array_agg(res.after_mlp ORDER BY p.n) AS h
            FROM    unnest(explore_input.places) WITH ORDINALITY AS p(place, n)
            JOIN    gptsql.residual res ON res.run_id = explore_input.run AND res.block = explore_input.block - 1
                                       AND res.place = p.place
            WHERE   explore_input.block > 0
    )
    SELECT  coalesce((SELECT h FROM embedded), (SELECT h FROM handed_on));
END;

-- Numbers rounded for the page (NULLs kept, order kept).
CREATE FUNCTION gptsql.rounded(x float8[], digits int)
RETURNS numeric[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT  ARRAY(SELECT round(v::numeric, digits) FROM unnest(x) WITH ORDINALITY AS t(v, n) ORDER BY n)
    WHERE   x IS NOT NULL;
END;

-- The run's tokens: id, piece, bytes, and whether the blocks read them (the last chosen is not).
CREATE FUNCTION gptsql.explore_tokens(run bigint)
RETURNS TABLE (place int, token int, piece text, bytes bytea, is_prompt boolean, probability float8, read boolean)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  rt.place, rt.token, tok.piece, tok.bytes, rt.is_prompt, rt.probability,
            EXISTS (SELECT FROM gptsql.residual res WHERE res.run_id = run AND res.block = 0 AND res.place = rt.place)
    FROM    gptsql.run_token rt
    JOIN    gptsql.run r ON r.id = rt.run_id
    JOIN    gptsql.token tok ON tok.model_id = r.model_id AND tok.token = rt.token
    WHERE   rt.run_id = run
    ORDER BY rt.place;
END;

-- Embeddings: the token's row of wte, the place's row of wpe (GPT-2; the Llama family has none:
-- it turns q and k by their place instead), and their sum, the model's input (gptsql.embeddings).
CREATE FUNCTION gptsql.explore_embedding(run bigint, place int)
RETURNS TABLE (step int, what text, at_place int, unit int, value float8, vals float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.* FROM gptsql.explore_run(run, place) AS c
    ), token_row AS (
            SELECT  coalesce(wte.w, wte.h::vector) AS w
            FROM    config JOIN gptsql.wte ON wte.model_id = config.model AND wte.token = config.token
    ), position_row AS (
            SELECT  wpe.w
            FROM    config JOIN gptsql.wpe ON wpe.model_id = config.model AND wpe.place = explore_embedding.place
    ), input AS (
            SELECT  (gptsql.embeddings(config.model, ARRAY[config.token], ARRAY[place]))[1] AS h
            FROM    config
    )
    SELECT  1, format('token embedding: row %s of wte', config.token), place, NULL::int, NULL::float8,
            token_row.w::real[]::float8[]
    FROM    config, token_row
    UNION ALL
    SELECT  2, format('position embedding: row %s of wpe', place), place, NULL, NULL, position_row.w::real[]::float8[]
    FROM    position_row
    UNION ALL
    SELECT  3, CASE WHEN EXISTS (SELECT FROM position_row) THEN 'input of block 0 = token + position'
                    ELSE 'input of block 0 = the token embedding (positions turn q and k: RoPE)' END,
            place, NULL, NULL, input.h::real[]::float8[]
    FROM    input
    ORDER BY 1;
END;

-- A norm of the model at a place: ln_1 or ln_2 of a block, or ln_f (after the last block). Its
-- input, the statistics it divides by, the normalised vector, gamma and beta, and its output, which
-- is the engine's (gptsql.norm_all). GPT-2's layer norm subtracts the mean and divides by the
-- standard deviation; the Llama family's RMS norm divides by the root mean square (no mean, no beta).
CREATE FUNCTION gptsql.explore_norm(run bigint, place int, norm text, block int DEFAULT NULL)
RETURNS TABLE (step int, what text, at_place int, unit int, value float8, vals float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.*, CASE explore_norm.norm WHEN 'ln_f' THEN c.n_layer
                                                ELSE gptsql.explore_block(c.model, explore_norm.block) END AS at_block,
                    m.layer_norm_epsilon AS eps
            FROM    gptsql.explore_run(explore_norm.run, explore_norm.place) AS c
            JOIN    gptsql.model m ON m.id = c.model
            WHERE   explore_norm.norm IN ('ln_1', 'ln_2', 'ln_f')
    ), input AS (                       -- ln_1 reads the block's input, ln_2 the stream after its attention
            SELECT  CASE norm WHEN 'ln_2' THEN (SELECT res.after_attention FROM gptsql.residual res
                                                WHERE res.run_id = run AND res.block = config.at_block
                                                  AND res.place = explore_norm.place)
                              ELSE (gptsql.explore_input(run, config.at_block, ARRAY[place]))[1] END AS x
            FROM    config
    ), weights AS (
            SELECT  n.gamma, n.beta
            FROM    config JOIN gptsql.norm n ON n.model_id = config.model AND n.name = explore_norm.norm
                                   AND n.block = config.at_block
    ), mean AS (                        -- GPT-2 only: the RMS norm does not centre
            SELECT  CASE WHEN config.family = 'llama' THEN 0
                         ELSE inner_product(input.x, gptsql.fill(1, config.n_embd)) / config.n_embd END AS mu
            FROM    config, input
    ), centred AS (
            SELECT  input.x - gptsql.fill(mean.mu, config.n_embd) AS c
            FROM    config, input, mean
    ), spread AS (                      -- variance (GPT-2) or mean square (Llama) of what is divided
            SELECT  inner_product(centred.c, centred.c) / config.n_embd AS var
            FROM    config, centred
    ), normalised AS (
            SELECT  centred.c * gptsql.fill(1 / sqrt(spread.var + config.eps), config.n_embd) AS xhat,
                    1 / sqrt(spread.var + config.eps) AS scale
            FROM    config, centred, spread
    ), output AS (                      -- the engine's own norm
            SELECT  (gptsql.norm_all(config.model, norm, config.at_block, ARRAY[input.x]))[1] AS y
            FROM    config, input
    )
    SELECT  1, format('input x (%s)', CASE norm WHEN 'ln_1' THEN 'the stream entering the block'
                                                WHEN 'ln_2' THEN 'the stream after the attention'
                                                ELSE 'the last block''s output' END),
            place, NULL::int, NULL::float8, input.x::real[]::float8[]
    FROM    input
    UNION ALL
    SELECT  2, 'mean of x', place, NULL, mean.mu, NULL
    FROM    config, mean WHERE config.family <> 'llama'
    UNION ALL
    SELECT  3, 'x − mean', place, NULL, NULL, centred.c::real[]::float8[]
    FROM    config, centred WHERE config.family <> 'llama'
    UNION ALL
    SELECT  4, CASE WHEN config.family = 'llama' THEN 'mean square of x' ELSE 'variance of x' END,
            place, NULL, spread.var, NULL
    FROM    config, spread
    UNION ALL
    SELECT  5, CASE WHEN config.family = 'llama' THEN '1 / √(mean square + ε)' ELSE '1 / √(variance + ε)' END,
            place, NULL, normalised.scale, NULL
    FROM    config, normalised
    UNION ALL
    SELECT  6, CASE WHEN config.family = 'llama' THEN 'normalised: x / √(mean square + ε)'
                    ELSE 'normalised: (x − mean) / √(variance + ε)' END,
            place, NULL, NULL, normalised.xhat::real[]::float8[]
    FROM    config, normalised
    UNION ALL
    SELECT  7, format('γ (gamma) of %s', norm), place, NULL, NULL, weights.gamma::real[]::float8[]
    FROM    weights
    UNION ALL
    SELECT  8, format('β (beta) of %s', norm), place, NULL, NULL, weights.beta::real[]::float8[]
    FROM    weights WHERE weights.beta IS NOT NULL
    UNION ALL
    SELECT  9, CASE WHEN (SELECT beta FROM weights) IS NULL THEN 'output = normalised × γ'
                    ELSE 'output = normalised × γ + β' END,
            place, NULL, NULL, output.y::real[]::float8[]
    FROM    output
    ORDER BY 1;
END;

-- One query head of a block at a place: the queries, keys and values of the places up to it (the
-- KV cache, computed again from the recorded stream by gptsql.qkv), its scores q·k, scaled by
-- 1/√head_dim, the causal mask, the softmax (as gptsql.attend takes it: exp() relative to the top
-- score), the weights the run recorded, the weighted sum of the values, and that sum through the
-- head's columns of the projection: its share of the attention's output. A query head reads the
-- key/value head head / (n_head / n_kv_head): its own in GPT-2, one shared by a group in Llama.
CREATE FUNCTION gptsql.explore_attention(run bigint, place int, block int, head int)
RETURNS TABLE (step int, what text, at_place int, unit int, value float8, vals float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.*, c.n_head / c.n_kv_head AS group_size,
                    gptsql.explore_head(c.model, explore_attention.head) / (c.n_head / c.n_kv_head) AS kv,
                    gptsql.explore_block(c.model, explore_attention.block) AS at_block
            FROM    gptsql.explore_run(explore_attention.run, explore_attention.place) AS c
    ), normed AS (                      -- ln_1 of the stream entering the block, every place up to this one
            SELECT  gptsql.norm_all(config.model, 'ln_1', config.at_block,
                                    gptsql.explore_input(run, config.at_block, ARRAY(SELECT generate_series(0, place))))
                    AS x
            FROM    config
    ), kv_cache AS MATERIALIZED (       -- q, k, v of the key/value head, at every place up to this one
            SELECT  a.n - 1 AS key_place, a.q, a.k, a.v
            FROM    config, normed,
                    gptsql.qkv(config.model, config.at_block, normed.x, ARRAY(SELECT generate_series(0, place)),
                               config.kv, config.kv + 1) AS a
    ), query AS (                       -- this head's query (Llama: its slice of the group's queries)
            SELECT  subvector(kv_cache.q, (head % config.group_size) * config.head_dim + 1, config.head_dim) AS q
            FROM    config, kv_cache
            WHERE   kv_cache.key_place = place
    ), scores AS (
            SELECT  kv_cache.key_place, inner_product(query.q, kv_cache.k) AS score,
                    inner_product(query.q, kv_cache.k) / sqrt(config.head_dim) AS scaled
            FROM    config, query, kv_cache
    ), top AS (
            SELECT  max(scores.scaled) AS top FROM scores
    ), softmax AS (
            SELECT  scores.key_place, gptsql.weight_exp(scores.scaled - top.top)
                                      / sum(gptsql.weight_exp(scores.scaled - top.top)) OVER () AS weight
            FROM    scores, top
    ), recorded AS (
            SELECT  w.weight, w.n::int - 1 AS key_place
            FROM    gptsql.attention_row a, unnest(a.weights) WITH ORDINALITY AS w(weight, n)
            WHERE   a.run_id = run AND a.block = explore_attention.block AND a.head = explore_attention.head
              AND   a.place = explore_attention.place
    ), mixed AS (                       -- Σ weight × value
            SELECT  sum(kv_cache.v * gptsql.fill(softmax.weight, config.head_dim)) AS z
            FROM    config, kv_cache JOIN softmax ON softmax.key_place = kv_cache.key_place
    ), projected AS (                   -- z through the head's columns of attn_proj
            SELECT  array_agg(coalesce(inner_product(mixed.z, subvector(w.w, head * config.head_dim + 1, config.head_dim)),
                                       inner_product(mixed.z::halfvec, subvector(w.h, head * config.head_dim + 1,
                                                                                 config.head_dim)))::float8
                              ORDER BY w.grp, w.idx) AS y
            FROM    config
            CROSS JOIN mixed
            JOIN    gptsql.linear w ON w.model_id = config.model AND w.name = 'attn_proj' AND w.block = config.at_block
                                   AND w.part = 0
    ), mask AS (                        -- every place the run read: later ones are hidden from the query
            SELECT  p AS key_place, CASE WHEN p <= place THEN 0 END::float8 AS value
            FROM    config, generate_series(0, config.places - 1) AS p
    )
    SELECT  1, format('query q: head %s', head), place, NULL::int, NULL::float8, query.q::real[]::float8[]
    FROM    query
    UNION ALL
    SELECT  2, format('keys k: key/value head %s', config.kv), kv_cache.key_place, NULL, NULL, kv_cache.k::real[]::float8[]
    FROM    config, kv_cache
    UNION ALL
    SELECT  3, format('values v: key/value head %s', config.kv), kv_cache.key_place, NULL, NULL, kv_cache.v::real[]::float8[]
    FROM    config, kv_cache
    UNION ALL
    SELECT  4, 'score q·k', scores.key_place, NULL, scores.score, NULL
    FROM    scores
    UNION ALL
    SELECT  5, format('scaled: q·k / √%s', config.head_dim), scores.key_place, NULL, scores.scaled, NULL
    FROM    config, scores
    UNION ALL
    SELECT  6, 'causal mask: 0, or −∞ (NULL) after the query', mask.key_place, NULL, mask.value, NULL
    FROM    mask
    UNION ALL
    SELECT  7, 'softmax weight', softmax.key_place, NULL, softmax.weight, NULL
    FROM    softmax
    UNION ALL
    SELECT  8, 'weight the run recorded (gptsql.attention_row)', recorded.key_place, NULL, recorded.weight, NULL
    FROM    recorded
    UNION ALL
    SELECT  9, 'weighted values z = Σ weight × v', place, NULL, NULL, mixed.z::real[]::float8[]
    FROM    mixed
    UNION ALL
    SELECT  10, format('z × attn_proj (head %s''s columns): its share of the attention output', head),
            place, NULL, NULL, projected.y
    FROM    projected
    ORDER BY 1, 3;
END;

-- The attention's output and the residual add at a place: the stream entering the block, the
-- attention's output (every head's share through attn_proj, with its bias: the recorded stream
-- after the attention minus the stream before it), and the stream after the attention.
CREATE FUNCTION gptsql.explore_projection(run bigint, place int, block int)
RETURNS TABLE (step int, what text, at_place int, unit int, value float8, vals float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.*, gptsql.explore_block(c.model, explore_projection.block) AS at_block
            FROM    gptsql.explore_run(explore_projection.run, explore_projection.place) AS c
    ), input AS (
            SELECT  (gptsql.explore_input(explore_projection.run, config.at_block, ARRAY[place]))[1] AS h
            FROM    config
    ), after AS (
            SELECT  res.after_attention AS a
            FROM    config JOIN gptsql.residual res ON res.run_id = explore_projection.run AND res.block = config.at_block
                                                   AND res.place = explore_projection.place
    )
    SELECT  1, 'input h: the stream entering the block', place, NULL::int, NULL::float8, input.h::real[]::float8[]
    FROM    input
    UNION ALL
    SELECT  2, 'attention output: every head through attn_proj (= after − h)', place, NULL, NULL,
            (after.a - input.h)::real[]::float8[]
    FROM    input, after
    UNION ALL
    SELECT  3, 'after the attention = h + attention output (gptsql.residual)', place, NULL, NULL,
            after.a::real[]::float8[]
    FROM    after
    ORDER BY 1;
END;

-- The MLP at a place: its input (ln_2's output), its hidden units before and after the activation
-- (GPT-2: c_fc, then GELU; Llama: c_fc's gate and up, then silu(gate) × up), the strongest
-- units, its output (the engine's gptsql.mlp_share: mlp_proj of the units), the recorded difference
-- it made to the stream, and the stream after it.
CREATE FUNCTION gptsql.explore_mlp(run bigint, place int, block int, strongest int DEFAULT 10)
RETURNS TABLE (step int, what text, at_place int, unit int, value float8, vals float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.*, gptsql.explore_block(c.model, explore_mlp.block) AS at_block
            FROM    gptsql.explore_run(explore_mlp.run, explore_mlp.place) AS c
    ), stream AS (
            SELECT  res.after_attention AS a, res.after_mlp AS h
            FROM    config JOIN gptsql.residual res ON res.run_id = explore_mlp.run AND res.block = config.at_block
                                                   AND res.place = explore_mlp.place
    ), input AS (
            SELECT  (gptsql.norm_all(config.model, 'ln_2', config.at_block, ARRAY[stream.a]))[1] AS x
            FROM    config, stream
    ), gate AS (                        -- c_fc's units, no activation: GPT-2's hidden units, Llama's gate
            SELECT  gptsql.concat(y.y ORDER BY y.grp)::real[]::float8[] AS units
            FROM    config, input,
                    gptsql.matmul(config.model, config.at_block, 'c_fc', ARRAY[input.x],
                                  ARRAY(SELECT generate_series(0, config.mlp_groups - 1))) AS y
    ), up AS (                          -- Llama: SwiGLU's up projection (c_fc's rows, the gate held open)
            SELECT  gptsql.concat(y.y ORDER BY y.grp)::real[]::float8[] AS units
            FROM    config, input,
                    gptsql.matmul(config.model, config.at_block, 'c_fc', ARRAY[input.x],
                                  ARRAY(SELECT generate_series(0, config.mlp_groups - 1)), activation => 'one', up => true) AS y
            WHERE   config.family = 'llama'
    ), activated AS (                   -- GELU (GPT-2), silu(gate) × up (Llama), unit by unit
            SELECT  ARRAY(SELECT CASE WHEN config.family = 'llama'
                                      THEN gptsql.silu(g.x) * (SELECT up.units[g.n] FROM up)
                                      ELSE gptsql.gelu(g.x) END
                          FROM   unnest(gate.units) WITH ORDINALITY AS g(x, n)
                          ORDER BY g.n) AS units
            FROM    config, gate
    ), strongest_units AS (
            SELECT  a.n::int - 1 AS unit, a.x AS after, gate.units[a.n] AS before
            FROM    gate, activated, unnest(activated.units) WITH ORDINALITY AS a(x, n)
            ORDER BY abs(a.x) DESC, a.n
            LIMIT   strongest
    ), output AS (                      -- the engine's MLP
            SELECT  (gptsql.mlp_share(config.model, config.at_block, ARRAY[input.x], 0, 1))[1] AS y
            FROM    config, input
    )
    SELECT  rows.* FROM (
            SELECT  1 AS step, 'input: ln_2''s output' AS what, place AS at_place, NULL::int AS unit,
                    NULL::float8 AS value, input.x::real[]::float8[] AS vals
            FROM    input
            UNION ALL
            SELECT  2, CASE WHEN config.family = 'llama' THEN 'gate: c_fc, before the activation'
                            ELSE 'hidden units: c_fc, before the activation' END, place, NULL, NULL, gate.units
            FROM    config, gate
            UNION ALL
            SELECT  3, 'up: c_fc''s up rows', place, NULL, NULL, up.units
            FROM    up
            WHERE   up.units IS NOT NULL
            UNION ALL
            SELECT  4, CASE WHEN config.family = 'llama' THEN 'hidden units: silu(gate) × up'
                            ELSE 'hidden units after GELU' END, place, NULL, NULL, activated.units
            FROM    config, activated
            UNION ALL
            SELECT  5, 'strongest unit: before, after the activation', place, s.unit, s.after, ARRAY[s.before, s.after]
            FROM    strongest_units s
            UNION ALL
            SELECT  6, 'MLP output: mlp_proj of the hidden units', place, NULL, NULL, output.y::real[]::float8[]
            FROM    output
            UNION ALL
            SELECT  7, 'what the run recorded it added: after the MLP − after the attention', place, NULL, NULL,
                    (stream.h - stream.a)::real[]::float8[]
            FROM    stream
            UNION ALL
            SELECT  8, 'after the MLP: the block''s output (gptsql.residual)', place, NULL, NULL,
                    stream.h::real[]::float8[]
            FROM    stream
    ) AS rows
    ORDER BY rows.step, abs(rows.value) DESC NULLS LAST, rows.unit;
END;

-- The best tokens for each of a batch of hidden states (after ln_f), with their probability under
-- the softmax over the whole vocabulary: one scan of the vocabulary per hidden state, each over
-- the session's shares. Every view that scores many hidden states (the logit lens) calls this one.
CREATE FUNCTION gptsql.explore_top_tokens(model int, hidden vector[], top_n int)
RETURNS TABLE (n int, rank int, token int, probability float8, logit float8)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH shares AS (
            SELECT  gptsql.shares(model) AS n
    )
    SELECT  h.n::int, d.rank, d.token, d.probability, d.logit
    FROM    shares, unnest(hidden) WITH ORDINALITY AS h(x, n)
    CROSS JOIN LATERAL gptsql.distribution(model, h.x, top_n, shares.n) AS d
    ORDER BY h.n, d.rank;
END;

-- The logit lens over places first_place .. last_place and blocks first_block .. last_block: what
-- the model would say if it stopped after each block (its output through ln_f and the vocabulary).
CREATE FUNCTION gptsql.explore_lens(run bigint, first_place int, last_place int, first_block int, last_block int,
                                    top_n int DEFAULT 1)
RETURNS TABLE (block int, place int, piece text, rank int, token int, predicted_piece text,
               probability float8, logit float8, is_next boolean)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.model, c.n_layer
            FROM    gptsql.explore_run(run, first_place) AS c, gptsql.explore_run(run, last_place) AS last_one
            WHERE   gptsql.explore_block(c.model, first_block) <= gptsql.explore_block(c.model, last_block)
    ), outputs AS MATERIALIZED (        -- each block's output at each place, in one batch
            SELECT  row_number() OVER (ORDER BY res.block, res.place)::int AS n, res.block, res.place, res.after_mlp
            FROM    gptsql.residual res
            WHERE   res.run_id = run AND res.block BETWEEN first_block AND last_block
              AND   res.place BETWEEN first_place AND last_place
    ), normed AS (                      -- through ln_f, as if no block came after
            SELECT  gptsql.norm_all(config.model, 'ln_f', config.n_layer,
                                    ARRAY(SELECT o.after_mlp FROM outputs o ORDER BY o.n)) AS x
            FROM    config
    ), scored AS (
            SELECT  t.* FROM config, normed, gptsql.explore_top_tokens(config.model, normed.x, top_n) AS t
    )
    SELECT  o.block, o.place, here_tok.piece, s.rank, s.token, said.piece, s.probability, s.logit,
            coalesce(s.token = next.token, false)
    FROM    config
    CROSS JOIN scored s
    JOIN    outputs o ON o.n = s.n
    JOIN    gptsql.token said ON said.model_id = config.model AND said.token = s.token
    LEFT JOIN gptsql.run_token here ON here.run_id = run AND here.place = o.place
    LEFT JOIN gptsql.token here_tok ON here_tok.model_id = config.model AND here_tok.token = here.token
    LEFT JOIN gptsql.run_token next ON next.run_id = run AND next.place = o.place + 1
    ORDER BY o.block, o.place, s.rank;
END;

-- The next token after a place: the final norm's output scored against the vocabulary (the
-- logits), the softmax at temperature 1 and at the run's temperature (or the one given), the
-- top-k / top-p cut as gptsql.choose makes it, the probability each kept token is drawn with, the
-- token gptsql.choose draws with the run's own uniform number where the run drew one (a seeded
-- run's: gptsql.uniform(seed, place + 1); an unseeded run's draw used random() and cannot be
-- repeated, and a prompt's place drew nothing: NULL), and the token the run went on with (or the
-- prompt's next). The `shown` best tokens, and the next token if it is not
-- among them (its rank counted over the vocabulary).
CREATE FUNCTION gptsql.explore_sampling(run bigint, place int, temperature float8 DEFAULT NULL,
                                        top_k int DEFAULT NULL, top_p float8 DEFAULT NULL, shown int DEFAULT 20)
RETURNS TABLE (rank int, token int, piece text, logit float8, probability float8, p_at_temperature float8,
               cumulative float8, kept boolean, p_drawn float8, drawn boolean, next boolean)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH config AS (
            SELECT  c.model, c.n_layer,
                    coalesce(explore_sampling.temperature, r.temperature) AS t,
                    coalesce(explore_sampling.top_k, r.top_k) AS k,
                    coalesce(explore_sampling.top_p, r.top_p) AS p,
                    CASE WHEN r.seed IS NOT NULL THEN gptsql.uniform(r.seed, explore_sampling.place + 1) END AS u,
                    next.token AS next_token, coalesce(NOT next.is_prompt, false) AS drew
            FROM    gptsql.explore_run(explore_sampling.run, explore_sampling.place) AS c
            JOIN    gptsql.run r ON r.id = explore_sampling.run
            LEFT JOIN gptsql.run_token next ON next.run_id = explore_sampling.run AND next.place = explore_sampling.place + 1
    ), hidden AS (                      -- the final norm of the last block's output
            SELECT  (gptsql.norm_all(config.model, 'ln_f', config.n_layer,
                                     gptsql.explore_input(explore_sampling.run, config.n_layer,
                                                          ARRAY[explore_sampling.place])))[1] AS x
            FROM    config
    ), vocabulary AS (                  -- one scan: the best logits (as many as top-k or top-p may
                                        -- keep, as gptsql.choose reads them), the softmax sums at 1 and T
            SELECT  m.*
            FROM    config, hidden,
                    gptsql.merge_answers(gptsql.vocab_shares(config.model, hidden.x, 1, config.t, coalesce(config.u, 0.5),
                                                             greatest(explore_sampling.shown, config.k,
                                                                      CASE WHEN config.p < 1 THEN gptsql.nucleus_candidates()
                                                                           ELSE 0 END)),
                                         config.t) AS m
    ), ranked AS (
            SELECT  (row_number() OVER (ORDER BY c.logit DESC, c.token))::int AS rank, c.token, c.logit
            FROM    vocabulary, unnest(vocabulary.cand_tokens, vocabulary.cand_logits) AS c(token, logit)
    ), tempered AS (                    -- e^((logit - top) / T): the softmax at T before its sum (greedy: all on the best)
            SELECT  ranked.*, gptsql.safe_exp(ranked.logit - vocabulary.peak) / vocabulary.z AS probability,
                    CASE WHEN config.t > 0 THEN gptsql.safe_exp((ranked.logit - vocabulary.peak) / config.t)
                         ELSE (ranked.rank = 1)::int END AS e,
                    CASE WHEN config.t > 0 THEN vocabulary.mass ELSE 1 END AS mass
            FROM    config, vocabulary, ranked
    ), within_k AS (                    -- top-k keeps the k best, renormalised among them
            SELECT  tempered.*, tempered.e / tempered.mass AS p_at_t,
                    CASE WHEN config.k > 0 AND config.t > 0
                         THEN tempered.e / sum(tempered.e) FILTER (WHERE tempered.rank <= config.k) OVER ()
                         ELSE tempered.e / tempered.mass END AS p_in_k,
                    config.k = 0 OR config.t = 0 OR tempered.rank <= config.k AS in_k
            FROM    config, tempered
    ), nucleus AS (                     -- top-p keeps tokens until the mass before them reaches p
            SELECT  within_k.*,
                    sum(within_k.p_in_k) FILTER (WHERE within_k.in_k) OVER (ORDER BY within_k.rank ROWS UNBOUNDED PRECEDING)
                    AS cum
            FROM    within_k
    ), cut AS (
            SELECT  nucleus.*, nucleus.in_k AND nucleus.cum - nucleus.p_in_k < config.p AND nucleus.e > 0 AS kept
            FROM    config, nucleus
    ), held AS (                        -- the kept tokens' mass: whole unless the nucleus reaches past the candidates
            SELECT  sum(cut.p_in_k) FILTER (WHERE cut.kept) AS kept_mass,
                    config.k > 0 OR config.t = 0 OR config.p = 1 OR max(cut.cum) >= config.p AS whole
            FROM    config, cut
            GROUP BY config.k, config.t, config.p
    ), draw AS (                        -- the engine's own draw with the run's uniform number
            SELECT  c.token
            FROM    config, hidden, gptsql.choose(config.model, hidden.x, config.t, config.k, config.p,
                                                  coalesce(config.u, 0.5), 1) AS c
            WHERE   config.drew AND (config.u IS NOT NULL OR config.t = 0)
    ), outside AS (                     -- the next token when it is not among the best shown
            SELECT  1 + (SELECT count(*) FROM gptsql.logits(config.model, hidden.x) AS l
                         WHERE l.logit > inner_product(hidden.x, coalesce(wte.w, wte.h::vector))
                            OR (l.logit = inner_product(hidden.x, coalesce(wte.w, wte.h::vector)) AND l.token < wte.token))
                    AS rank,
                    wte.token, inner_product(hidden.x, coalesce(wte.w, wte.h::vector)) AS logit
            FROM    config
            CROSS JOIN hidden
            JOIN    gptsql.wte ON wte.model_id = config.model AND wte.token = config.next_token
            WHERE   NOT EXISTS (SELECT FROM cut WHERE cut.token = config.next_token AND cut.rank <= explore_sampling.shown)
    )
    SELECT  cut.rank, cut.token, tok.piece, cut.logit, cut.probability, cut.p_at_t,
            CASE WHEN cut.in_k THEN cut.cum END, cut.kept,
            CASE WHEN NOT cut.kept THEN 0 WHEN held.whole THEN cut.p_in_k / held.kept_mass END,
            CASE WHEN config.drew AND (config.u IS NOT NULL OR config.t = 0) THEN cut.token = (SELECT draw.token FROM draw) END,
            cut.token IS NOT DISTINCT FROM config.next_token
    FROM    config
    CROSS JOIN held
    CROSS JOIN cut
    JOIN    gptsql.token tok ON tok.model_id = config.model AND tok.token = cut.token
    WHERE   cut.rank <= explore_sampling.shown
    UNION ALL
    SELECT  o.rank, o.token, tok.piece, o.logit, gptsql.safe_exp(o.logit - v.peak) / v.z,
            CASE WHEN config.t > 0 THEN gptsql.safe_exp((o.logit - v.peak) / config.t) / v.mass ELSE 0 END,
            NULL, NULL, NULL,
            CASE WHEN config.drew AND (config.u IS NOT NULL OR config.t = 0) THEN o.token = (SELECT draw.token FROM draw) END,
            true
    FROM    config
    CROSS JOIN vocabulary v
    CROSS JOIN outside o
    JOIN    gptsql.token tok ON tok.model_id = config.model AND tok.token = o.token
    ORDER BY 1;
END;

-- Attention thumbnails of a run, a block at a time (all blocks when NULL): each head's weights cut
-- into squares of `width` places a side (at most `pixels` squares across), a square showing its
-- strongest weight, so that a sharp look stays visible.
CREATE FUNCTION gptsql.explore_attention_grid(run bigint, one_block int, pixels int)
RETURNS TABLE (block int, head int, query_square int, weights float8[])
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH places AS (                    -- places that went through the blocks
            SELECT  count(*) AS n FROM gptsql.residual res WHERE res.run_id = run AND res.block = 0
    ), binning AS (
            SELECT  greatest(1, ceil(places.n / pixels::float8))::int AS width FROM places
    ), squares AS (
            SELECT  a.block, a.head, a.place / binning.width AS query_square, (w.n::int - 1) / binning.width AS key_square,
                    max(w.weight) AS weight
            FROM    binning, gptsql.attention_row a, unnest(a.weights) WITH ORDINALITY AS w(weight, n)
            WHERE   a.run_id = run AND (a.block = one_block OR one_block IS NULL)
            GROUP BY 1, 2, 3, 4
    )
    SELECT  squares.block, squares.head, squares.query_square, array_agg(squares.weight ORDER BY squares.key_square)
    FROM    squares
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3;
END;
