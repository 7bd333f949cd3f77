-- 04_attention.sql — causal multi-head self-attention with a KV cache.
--
-- x holds the normalized inputs of the new places start, start + 1, ...; this call adds their
-- queries, keys and values to gptsql.kv_cache, which holds those of the earlier places. Returns
-- the attention output (after the c_proj projection) of each new place; the block adds the residual.

DROP FUNCTION IF EXISTS gptsql.attention_scores(bigint, int, int, int, int, vector, int, vector[], vector[]);
DROP FUNCTION IF EXISTS gptsql.attention_softmax(bigint, int, int, int, int, vector, int, vector[], vector[], float8);

-- exp() of an attention score minus a reference score: 0 below e^-46 (1e-20), where a weight no
-- longer changes a float4 sum next to the reference (weight 1), and where pgvector would call the
-- product of a value vector with it an underflow.
CREATE OR REPLACE FUNCTION gptsql.weight_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x < -46 THEN 0 ELSE exp(x) END
$$;

-- q·k / sqrt(d) of one query (place, head) against every key at or before it (the causal mask):
-- one index range of the KV cache, which already holds the keys of this step's places, in the
-- order of the places. OFFSET 0 keeps `score` a column: PostgreSQL inlines this function into
-- its caller, and a flattened subquery would put the inner product into every expression that
-- reads the score (the max, the exp() of the sum, of the mixed values and of the recorded
-- weights: five inner products a key instead of one).
CREATE OR REPLACE FUNCTION gptsql.attention_scores(run bigint, block int, place int, head int, q vector,
                                                   head_dim int)
RETURNS TABLE (key_place int, v vector, score float8)
LANGUAGE sql STABLE AS $$
    SELECT  c.place, c.v, inner_product(attention_scores.q, c.k) / sqrt(head_dim)   -- the query's q, not c.q
    FROM    gptsql.kv_cache c
    WHERE   c.run_id = run AND c.block = attention_scores.block AND c.head = attention_scores.head
      AND   c.place <= attention_scores.place
    ORDER BY c.place
    OFFSET  0
$$;

-- The softmax weights of those keys, exp() taken relative to the top score `top`: the attention's
-- second pass, for a query whose keys score far above its own.
CREATE OR REPLACE FUNCTION gptsql.attention_softmax(run bigint, block int, place int, head int, q vector,
                                                    head_dim int, top float8)
RETURNS TABLE (key_place int, v vector, weight float8)
LANGUAGE sql STABLE AS $$
    SELECT  s.key_place, s.v, gptsql.weight_exp(s.score - top) / sum(gptsql.weight_exp(s.score - top)) OVER ()
    FROM    gptsql.attention_scores(run, block, place, head, q, head_dim) AS s
$$;

-- Two statements: c_attn's q, k and v of the new places go into the KV cache first, so that every
-- query then reads all of its keys, new and cached alike, with one index range (a new place's
-- keys taken from arrays instead cost 2.5 times as much per key). Generic plans: custom ones were
-- planned anew at every call. No sequential scans: the cache's statistics swing between empty
-- (after a vacuum between runs) and large, and a plan made while it looked empty scanned all of
-- it in every block (~1 ms a block at 3,000 cached rows, growing with the context).
CREATE OR REPLACE FUNCTION gptsql.attention(run bigint, model int, block int, start int, x vector[])
RETURNS vector[]
LANGUAGE sql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
    WITH qkv AS (                       -- c_attn: per place one vector per head of q, then k, then v
            SELECT  place, grp, y
            FROM    gptsql.matmul(model, block, 'c_attn', x)
    )
    INSERT INTO gptsql.kv_cache (run_id, block, head, place, q, k, v)
    SELECT  run, block, q.grp, q.place + start, q.y, k.y, v.y
    FROM    gptsql.model m
    JOIN    qkv q ON q.grp < m.n_head
    JOIN    qkv k ON k.place = q.place AND k.grp = q.grp + m.n_head
    JOIN    qkv v ON v.place = q.place AND v.grp = q.grp + 2 * m.n_head
    WHERE   m.id = model;

    WITH config AS (
            SELECT  n_head, n_embd / n_head AS head_dim,
                    (SELECT r.record FROM gptsql.run r WHERE r.id = run) AS recording
            FROM    gptsql.model m
            WHERE   m.id = model
    ), heads AS MATERIALIZED (          -- per new place and head: the query and its own score
            SELECT  c.place, c.head, c.q, inner_product(c.q, c.k) / sqrt(config.head_dim) AS own_score
            FROM    config
            CROSS JOIN generate_series(0, config.n_head - 1) AS h(head)
            JOIN    gptsql.kv_cache c        -- head by head: one index range per head
                    ON c.run_id = run AND c.block = attention.block AND c.head = h.head AND c.place >= start
    ), attended AS (                    -- per query place and head: softmax over its keys, values mixed
            SELECT  heads.place, heads.head,
                    CASE WHEN one_pass.top - heads.own_score <= 20
                         THEN one_pass.mixed * gptsql.fill(1 / one_pass.z, config.head_dim)
                         ELSE (SELECT sum(v * gptsql.fill(weight, config.head_dim))
                               FROM   gptsql.attention_softmax(run, block, heads.place, heads.head, heads.q,
                                                               config.head_dim, one_pass.top))
                    END AS z,
                    CASE WHEN NOT config.recording THEN NULL   -- for exploring the run: who attended to whom
                         WHEN one_pass.top - heads.own_score <= 20
                         THEN ARRAY(SELECT e / one_pass.z FROM unnest(one_pass.e) AS e)
                         ELSE (SELECT array_agg(weight ORDER BY key_place)
                               FROM   gptsql.attention_softmax(run, block, heads.place, heads.head, heads.q,
                                                               config.head_dim, one_pass.top))
                    END AS weights
            FROM    config, heads
            CROSS JOIN LATERAL (
                    -- One pass over the keys. exp() is taken relative to the query's own score (its
                    -- key is always among them) and values are mixed before dividing by the sum.
                    -- Vectors hold float4, so this one pass is used while no score passes the query's
                    -- own by more than 20 (e^20 scales a value safely); past that, the CASEs above
                    -- read the keys once more, relative to the top score (attention_softmax).
                    -- FILTER, not CASE: an aggregate under a CASE still sorts and collects every key
                    -- (a 400-token prefill without recording, 1.73 -> 1.48 s of backend CPU).
                    SELECT  max(s.score) AS top, sum(s.e) AS z, sum(s.v * gptsql.fill(s.e, config.head_dim)) AS mixed,
                            array_agg(s.e ORDER BY s.key_place) FILTER (WHERE config.recording) AS e
                    FROM    (SELECT  c.key_place, c.v, c.score, gptsql.weight_exp(least(c.score - heads.own_score, 20)) AS e
                             FROM    gptsql.attention_scores(run, block, heads.place, heads.head, heads.q,
                                                             config.head_dim) AS c
                             ORDER BY c.key_place
                             OFFSET  0) AS s    -- e a column too: one exp() a key
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
