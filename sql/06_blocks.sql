-- 06_blocks.sql — a transformer block, and the blocks stacked by a recursive CTE.
--
--   a = h + attention(layer_norm(h, ln_1))
--   h' = a + mlp(layer_norm(a, ln_2))
--
-- forward() runs the new tokens of a run through every block (keys and values of earlier places
-- come from the KV cache) and returns the last place's hidden state after the final layer norm.

CREATE OR REPLACE FUNCTION gptsql.norm_all(model int, name text, block int, h vector[])
RETURNS vector[]
LANGUAGE sql STABLE AS $$
    SELECT  array_agg(gptsql.layer_norm(x, norm.gamma, norm.beta, m.layer_norm_epsilon) ORDER BY n)
    FROM    unnest(h) WITH ORDINALITY AS t(x, n)
    JOIN    gptsql.norm ON norm.model_id = model AND norm.name = norm_all.name AND norm.block = norm_all.block
    JOIN    gptsql.model m ON m.id = model
$$;

CREATE OR REPLACE FUNCTION gptsql.add_all(a vector[], b vector[])
RETURNS vector[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT  array_agg(x + y ORDER BY n)
    FROM    unnest(a, b) WITH ORDINALITY AS t(x, y, n)
$$;

CREATE OR REPLACE FUNCTION gptsql.block(run bigint, model int, block int, start int, h vector[])
RETURNS vector[]
LANGUAGE sql VOLATILE AS $$
    WITH mha_norm AS (
            SELECT  gptsql.norm_all(model, 'ln_1', block, h) AS x
    ), mha AS MATERIALIZED (
            SELECT  gptsql.add_all(h, gptsql.attention(run, model, block, start, x)) AS a
            FROM    mha_norm
    ), ffn_norm AS (
            SELECT  a, gptsql.norm_all(model, 'ln_2', block, a) AS x
            FROM    mha
    ), ffn AS MATERIALIZED (
            SELECT  a, gptsql.add_all(a, gptsql.mlp(model, block, x)) AS h
            FROM    ffn_norm
    ), recorded AS (                    -- the residual stream, for exploring the run
            INSERT INTO gptsql.residual (run_id, block, place, after_attention, after_mlp)
            SELECT  run, block, start + n::int - 1, after_attention, after_mlp
            FROM    ffn, unnest(ffn.a, ffn.h) WITH ORDINALITY AS t(after_attention, after_mlp, n)
            WHERE   (SELECT r.record FROM gptsql.run r WHERE r.id = run)
    )
    SELECT  h
    FROM    ffn
$$;

CREATE OR REPLACE FUNCTION gptsql.forward(run bigint, tokens int[], start int)
RETURNS vector
LANGUAGE sql VOLATILE AS $$
    WITH RECURSIVE config AS (
            SELECT  m.*
            FROM    gptsql.run r
            JOIN    gptsql.model m ON m.id = r.model_id
            WHERE   r.id = run
    ), blocks AS (
            SELECT  0 AS block, gptsql.embeddings(config.id, tokens, start) AS h
            FROM    config
            UNION ALL
            SELECT  blocks.block + 1, gptsql.block(run, config.id, blocks.block, start, blocks.h)
            FROM    blocks, config
            WHERE   blocks.block < config.n_layer
    )
    SELECT  gptsql.layer_norm(blocks.h[cardinality(blocks.h)], ln_f.gamma, ln_f.beta, config.layer_norm_epsilon)
    FROM    blocks, config
    JOIN    gptsql.norm ln_f ON ln_f.model_id = config.id AND ln_f.name = 'ln_f'
    WHERE   blocks.block = config.n_layer
$$;
