-- 04_attention.sql — causal multi-head self-attention with a KV cache.
--
-- x holds the normalized inputs of the new places start, start + 1, ...; keys and values of the
-- earlier places come from gptsql.kv_cache, and this call adds the new ones. Returns the attention
-- output (after the c_proj projection) of each new place; the residual is added by the block.

-- exp() of an attention score minus a reference score: 0 below e^-46 (1e-20), where a weight no
-- longer changes a float4 sum next to the reference (weight 1), and where pgvector would call the
-- product of a value vector with it an underflow.
CREATE OR REPLACE FUNCTION gptsql.weight_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x < -46 THEN 0 ELSE exp(x) END
$$;

-- q·k / sqrt(d) of one query (place, head) against every key at or before it (the causal mask):
-- the cached places from gptsql.kv_cache, then the new places of this step, whose keys and values
-- (ks, vs, from place `start` on) are not in the table yet.
CREATE OR REPLACE FUNCTION gptsql.attention_scores(run bigint, block int, start int, place int, head int,
                                                   q vector, head_dim int, ks vector[], vs vector[])
RETURNS TABLE (key_place int, v vector, score float8)
LANGUAGE sql STABLE AS $$
    SELECT  c.place, c.v, inner_product(q, c.k) / sqrt(head_dim)
    FROM    gptsql.kv_cache c
    WHERE   c.run_id = run AND c.block = attention_scores.block AND c.head = attention_scores.head
      AND   c.place < start
    UNION ALL
    SELECT  start + new.n::int - 1, new.v, inner_product(q, new.k) / sqrt(head_dim)
    FROM    unnest(ks[:place - start + 1], vs[:place - start + 1]) WITH ORDINALITY AS new(k, v, n)
$$;

-- The softmax weights of those keys, exp() taken relative to the top score `top`: the attention's
-- second pass, for a query whose keys score far above its own.
CREATE OR REPLACE FUNCTION gptsql.attention_softmax(run bigint, block int, start int, place int, head int,
                                                    q vector, head_dim int, ks vector[], vs vector[], top float8)
RETURNS TABLE (key_place int, v vector, weight float8)
LANGUAGE sql STABLE AS $$
    SELECT  s.key_place, s.v, gptsql.weight_exp(s.score - top) / sum(gptsql.weight_exp(s.score - top)) OVER ()
    FROM    gptsql.attention_scores(run, block, start, place, head, q, head_dim, ks, vs) AS s
$$;

CREATE OR REPLACE FUNCTION gptsql.attention(run bigint, model int, block int, start int, x vector[])
RETURNS vector[]
LANGUAGE sql VOLATILE AS $$
    WITH config AS (
            SELECT  n_head, n_embd / n_head AS head_dim,
                    (SELECT r.record FROM gptsql.run r WHERE r.id = run) AS recording
            FROM    gptsql.model m
            WHERE   m.id = model
    ), qkv AS (                         -- c_attn: per place one vector per head of q, then k, then v
            SELECT  place, grp, y
            FROM    gptsql.matmul(model, block, 'c_attn', x)
    ), heads AS (                       -- per new place and head: q, k, v, and the query's own score
            SELECT  q.place + start AS place, q.grp AS head, q.y AS q, k.y AS k, v.y AS v,
                    inner_product(q.y, k.y) / sqrt(config.head_dim) AS own_score
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
    ), attended AS (                    -- per query place and head: softmax over its keys, values mixed
            SELECT  heads.place, heads.head,
                    CASE WHEN one_pass.top - heads.own_score <= 20
                         THEN one_pass.mixed * gptsql.fill(1 / one_pass.z, config.head_dim)
                         ELSE (SELECT sum(v * gptsql.fill(weight, config.head_dim))
                               FROM   gptsql.attention_softmax(run, block, start, heads.place, heads.head, heads.q,
                                                               config.head_dim, fresh.ks, fresh.vs, one_pass.top))
                    END AS z,
                    CASE WHEN NOT config.recording THEN NULL   -- for exploring the run: who attended to whom
                         WHEN one_pass.top - heads.own_score <= 20
                         THEN ARRAY(SELECT e / one_pass.z FROM unnest(one_pass.e) AS e)
                         ELSE (SELECT array_agg(weight ORDER BY key_place)
                               FROM   gptsql.attention_softmax(run, block, start, heads.place, heads.head, heads.q,
                                                               config.head_dim, fresh.ks, fresh.vs, one_pass.top))
                    END AS weights
            FROM    config, heads
            CROSS JOIN LATERAL (SELECT f.ks, f.vs FROM fresh f WHERE f.head = heads.head OFFSET 0) AS fresh
            CROSS JOIN LATERAL (
                    -- One pass over the keys. exp() is taken relative to the query's own score (its
                    -- key is always among them) and values are mixed before dividing by the sum.
                    -- Vectors hold float4, so this one pass is used while no score passes the query's
                    -- own by more than 20 (e^20 scales a value safely); past that, the CASEs above
                    -- read the keys once more, relative to the top score (attention_softmax).
                    SELECT  max(s.score) AS top, sum(s.e) AS z, sum(s.v * gptsql.fill(s.e, config.head_dim)) AS mixed,
                            CASE WHEN config.recording THEN array_agg(s.e ORDER BY s.key_place) END AS e
                    FROM    (SELECT  c.key_place, c.v, c.score, gptsql.weight_exp(least(c.score - heads.own_score, 20)) AS e
                             FROM    gptsql.attention_scores(run, block, start, heads.place, heads.head, heads.q,
                                                             config.head_dim, fresh.ks, fresh.vs) AS c) AS s
            ) one_pass
    ), recorded AS (
            INSERT INTO gptsql.attention_row (run_id, block, head, place, weights)
            SELECT  run, block, head, place, weights
            FROM    attended
            WHERE   weights IS NOT NULL
    ), merged AS (                      -- the heads side by side again, n_embd wide
            SELECT  place, gptsql.concat(z ORDER BY head) AS z
            FROM    attended
            GROUP BY place
    )
    SELECT  array_agg(y ORDER BY place)
    FROM    gptsql.matmul(model, block, 'attn_proj', ARRAY(SELECT z FROM merged ORDER BY place))
$$;
