-- 04_attention.sql — causal multi-head self-attention with a KV cache.
--
-- x holds the normalized inputs of the new places start, start + 1, ...; keys and values of the
-- earlier places come from gptsql.kv_cache, and this call adds the new ones. Returns the attention
-- output (after the c_proj projection) of each new place; the residual is added by the block.

CREATE OR REPLACE FUNCTION gptsql.attention(run bigint, model int, block int, start int, x vector[])
RETURNS vector[]
LANGUAGE sql VOLATILE AS $$
    WITH config AS (
            SELECT  n_head, n_embd / n_head AS head_dim
            FROM    gptsql.model m
            WHERE   m.id = model
    ), qkv AS (                         -- c_attn: per place one vector per head of q, then k, then v
            SELECT  place, grp, y
            FROM    gptsql.matmul(model, block, 'c_attn', x)
    ), heads AS (
            SELECT  q.place + start AS place, q.grp AS head, q.y AS q, k.y AS k, v.y AS v
            FROM    config
            JOIN    qkv q ON q.grp < config.n_head
            JOIN    qkv k ON k.place = q.place AND k.grp = q.grp + config.n_head
            JOIN    qkv v ON v.place = q.place AND v.grp = q.grp + 2 * config.n_head
    ), fresh AS (                       -- the new places' keys and values, in order, one row per head
            SELECT  head, array_agg(k ORDER BY place) AS ks, array_agg(v ORDER BY place) AS vs
            FROM    heads
            GROUP BY head
    ), cached AS (                      -- keep this block's keys and values for the places to come
            INSERT INTO gptsql.kv_cache (run_id, block, head, place, k, v)
            SELECT  run, block, head, place, k, v
            FROM    heads
    ), scores AS (                      -- q·k / sqrt(d) against every key of the same head at or before
                                        -- the query (the causal mask): the cached places, then the new ones
            SELECT  heads.place, heads.head, c.key_place, c.v,
                    inner_product(heads.q, c.k) / sqrt(config.head_dim) AS score
            FROM    config, heads
            CROSS JOIN LATERAL (        -- one index range per head (OFFSET 0: never a scan of all heads)
                    SELECT  c.place AS key_place, c.k, c.v
                    FROM    gptsql.kv_cache c
                    WHERE   c.run_id = run AND c.block = attention.block AND c.head = heads.head
                      AND   c.place < start
                    OFFSET  0
            ) c
            UNION ALL
            SELECT  heads.place, heads.head, start + new.n::int - 1, new.v,
                    inner_product(heads.q, new.k) / sqrt(config.head_dim)
            FROM    config, heads
            JOIN    fresh ON fresh.head = heads.head
            CROSS JOIN LATERAL unnest(fresh.ks[:heads.place - start + 1], fresh.vs[:heads.place - start + 1])
                    WITH ORDINALITY AS new(k, v, n)
    ), softmax AS (                     -- numerically safe: subtract each row's maximum first
            SELECT  place, head, key_place, v,
                    gptsql.safe_exp(score - max(score) OVER (PARTITION BY place, head)) AS e
            FROM    scores
    ), weights AS (
            SELECT  place, head, key_place, v, e / sum(e) OVER (PARTITION BY place, head) AS weight
            FROM    softmax
    ), recorded AS (                    -- for exploring the run: who attended to whom
            INSERT INTO gptsql.attention_row (run_id, block, head, place, weights)
            SELECT  run, block, head, place, array_agg(weight ORDER BY key_place)
            FROM    weights
            WHERE   (SELECT r.record FROM gptsql.run r WHERE r.id = run)
            GROUP BY place, head
    ), mixed AS (                       -- each head's output: the values averaged by the weights
            SELECT  place, head, sum(v * gptsql.fill(weight, vector_dims(v))) AS z
            FROM    weights
            GROUP BY place, head
    ), merged AS (                      -- the heads side by side again, n_embd wide
            SELECT  place, gptsql.concat(z ORDER BY head) AS z
            FROM    mixed
            GROUP BY place
    )
    SELECT  array_agg(y ORDER BY place)
    FROM    gptsql.matmul(model, block, 'attn_proj', ARRAY(SELECT z FROM merged ORDER BY place))
$$;
