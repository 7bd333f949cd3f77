-- 04_attention.sql — causal multi-head self-attention with a KV cache.
--
-- x holds the normalized inputs of the new places start, start + 1, ...; this call adds their
-- queries, keys and values to gptsql.kv_cache, which holds those of the earlier places. Returns
-- the attention output (after the c_proj projection) of each new place; the block adds the residual.
--
-- A query reads its keys in two ways. The keys of whole chunks of C places (gptsql.kv_chunk, C =
-- chunk_places(head_dim)) are scored from one row per chunk, and the chunk's values are mixed by
-- one pgvector product: values stored dimension-major times the chunk's softmax weights repeated
-- head_dim times, summed over the chunks, then each dimension's C products added up once per query.
-- The keys after the last whole chunk (fewer than C, the query's own among them) are read one row
-- each from gptsql.kv_cache, as are all keys of a short context. All scores are taken first, so
-- exp() is relative to the top score: every weight is in [0, 1] and one pass over the keys does.

DROP FUNCTION IF EXISTS gptsql.attention_scores(bigint, int, int, int, int, vector, int, vector[], vector[]);
DROP FUNCTION IF EXISTS gptsql.attention_softmax(bigint, int, int, int, int, vector, int, vector[], vector[], float8);
DROP FUNCTION IF EXISTS gptsql.attention_scores(bigint, int, int, int, vector, int);
DROP FUNCTION IF EXISTS gptsql.attention_scores(bigint, int, int, int, vector, int, int);   -- its DEFAULT went
DROP FUNCTION IF EXISTS gptsql.attention_softmax(bigint, int, int, int, vector, int, float8);   -- no second pass now

-- exp() of an attention score minus a reference score: 0 below e^-46 (1e-20), where a weight no
-- longer changes a float4 sum next to the reference (weight 1), and where pgvector would call the
-- product of a value vector with it an underflow.
CREATE OR REPLACE FUNCTION gptsql.weight_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x < -46 THEN 0 ELSE exp(x) END
$$;

-- Places per kv_chunk row for a head width: k and v of C places stay under a page together
-- (C * head_dim <= 1000 floats each). 0, no chunks, for heads too wide to gain from them.
CREATE OR REPLACE FUNCTION gptsql.chunk_places(head_dim int)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN head_dim <= 250 THEN 1000 / head_dim ELSE 0 END
$$;

-- The whole chunks a query at `place` reads from gptsql.kv_chunk: those before its own place (its
-- own key stays in the tail, so the tail's softmax sum is never empty), and none while the context
-- is short (a chunk row costs more than the few keys it saves there).
CREATE OR REPLACE FUNCTION gptsql.chunks_read(place int, c int)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN c > 0 AND place / c >= 4 THEN place / c ELSE 0 END
$$;

-- q·k / sqrt(d) of one query (place, head) against the keys at places first .. place (the causal
-- mask): one index range of the KV cache, in the order of the places. OFFSET 0 keeps `score` a
-- column: PostgreSQL inlines this function into its caller, and a flattened subquery would put the
-- inner product into every expression that reads the score (five inner products a key, not one).
CREATE OR REPLACE FUNCTION gptsql.attention_scores(run bigint, block int, place int, head int, q vector,
                                                   head_dim int, first int)
RETURNS TABLE (key_place int, v vector, score float8)
LANGUAGE sql STABLE AS $$
    SELECT  c.place, c.v, inner_product(attention_scores.q, c.k) / sqrt(head_dim)   -- the query's q, not c.q
    FROM    gptsql.kv_cache c
    WHERE   c.run_id = run AND c.block = attention_scores.block AND c.head = attention_scores.head
      AND   c.place BETWEEN first AND attention_scores.place
    ORDER BY c.place
    OFFSET  0
$$;

-- The attention of heads [head_lo, head_hi) for the new places start .. start + n_new - 1, whose q,
-- k and v are in the KV cache already: per place and head the mix of values z (head_dim wide), and
-- the weights recorded when the run records. attention() runs it on every head; a worker's
-- attention_share() (sql/10_shards.sql) on its own.
CREATE OR REPLACE FUNCTION gptsql.attend(run bigint, model int, block int, start int, n_new int,
                                         head_lo int, head_hi int)
RETURNS TABLE (place int, head int, z vector)
LANGUAGE sql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
    -- The chunks completed by these places (and any before them not made yet) become kv_chunk rows:
    -- keys side by side, values transposed to dimension-major.
    WITH config AS (
            SELECT  m.n_embd / m.n_head AS head_dim, gptsql.chunk_places(m.n_embd / m.n_head) AS c
            FROM    gptsql.model m
            WHERE   m.id = model
    )
    INSERT INTO gptsql.kv_chunk (run_id, block, head, chunk, k, v)
    SELECT  run, block, h.head, todo.chunk,
            (SELECT  gptsql.concat(kc.k ORDER BY kc.place)
             FROM    gptsql.kv_cache kc
             WHERE   kc.run_id = run AND kc.block = attend.block AND kc.head = h.head
               AND   kc.place BETWEEN todo.chunk * config.c AND todo.chunk * config.c + config.c - 1),
            (SELECT  ARRAY(SELECT  rows.a[n % config.c + 1][n / config.c + 1]     -- element i of value j, i-major
                           FROM    generate_series(0, config.head_dim * config.c - 1) AS n)::vector
             FROM    (SELECT  array_agg(kc.v::real[] ORDER BY kc.place) AS a          -- C x head_dim
                      FROM    gptsql.kv_cache kc
                      WHERE   kc.run_id = run AND kc.block = attend.block AND kc.head = h.head
                        AND   kc.place BETWEEN todo.chunk * config.c AND todo.chunk * config.c + config.c - 1) AS rows)
    FROM    config
    CROSS JOIN generate_series(head_lo, head_hi - 1) AS h(head)
    CROSS JOIN LATERAL (SELECT  coalesce(max(ch.chunk) + 1, 0) AS next
                        FROM    gptsql.kv_chunk ch
                        WHERE   ch.run_id = run AND ch.block = attend.block AND ch.head = h.head) AS made
    CROSS JOIN LATERAL generate_series(made.next, (start + n_new) / nullif(config.c, 0) - 1) AS todo(chunk)
    WHERE   gptsql.chunks_read(start + n_new - 1, config.c) > 0;      -- never with C = 0 (no chunks)

    WITH config AS (
            SELECT  n_embd / n_head AS head_dim, gptsql.chunk_places(n_embd / n_head) AS c,
                    gptsql.fill(1, greatest(gptsql.chunk_places(n_embd / n_head), 1)) AS ones,
                    (SELECT r.record FROM gptsql.run r WHERE r.id = run) AS recording
            FROM    gptsql.model m
            WHERE   m.id = model
    ), heads AS MATERIALIZED (          -- per new place and head: the query, and the whole chunks it reads
            SELECT  c.place, c.head, c.q, gptsql.chunks_read(c.place, config.c) AS chunks
            FROM    config
            CROSS JOIN generate_series(head_lo, head_hi - 1) AS h(head)
            JOIN    gptsql.kv_cache c        -- head by head: one index range per head
                    ON c.run_id = run AND c.block = attend.block AND c.head = h.head AND c.place >= start
    ), scores AS MATERIALIZED (         -- q·k / sqrt(d) of every key at or before the query (the causal mask)
            SELECT  heads.place, heads.head, heads.chunks, by_chunk.scores AS chunk_scores,
                    tail.scores AS tail_scores, tail.vs AS tail_values, greatest(by_chunk.top, tail.top) AS top
            FROM    config, heads
            CROSS JOIN LATERAL (         -- whole chunks: C scores from each kv_chunk row (chunks x C)
                    SELECT  array_agg(one.scores ORDER BY ch.chunk) AS scores, max(one.top) AS top
                    FROM    gptsql.kv_chunk ch
                    CROSS JOIN LATERAL (
                            SELECT  array_agg(a.score) AS scores, max(a.score) AS top     -- in j's order, as generated
                            FROM    (SELECT  j, inner_product(heads.q, subvector(ch.k, j * config.head_dim + 1,
                                                                                 config.head_dim))
                                                 / sqrt(config.head_dim) AS score   -- as attention_scores divides
                                     FROM    generate_series(0, config.c - 1) AS j
                                     OFFSET  0) AS a      -- the score a column: one inner product a key
                    ) AS one
                    WHERE   ch.run_id = run AND ch.block = attend.block AND ch.head = heads.head
                      AND   ch.chunk < heads.chunks
            ) by_chunk
            CROSS JOIN LATERAL (         -- the keys after them, the query's own last: one cache row each
                    SELECT  array_agg(t.score) AS scores, array_agg(t.v) AS vs, max(t.score) AS top   -- in place order
                    FROM    gptsql.attention_scores(run, block, heads.place, heads.head, heads.q, config.head_dim,
                                                    heads.chunks * config.c) AS t
            ) tail
    ), softmax AS (                     -- exp() relative to the top score: every weight in [0, 1]
            SELECT  scores.place, scores.head, scores.chunks, c.e AS chunk_e, t.e AS tail_e,
                    coalesce(c.z, 0) + t.z AS z, scores.tail_values
            FROM    scores
            CROSS JOIN LATERAL (SELECT array_agg(w.e) AS e, sum(w.e) AS z      -- flat, in (chunk, place) order
                                FROM   (SELECT gptsql.weight_exp(x - scores.top) AS e
                                        FROM   unnest(scores.chunk_scores) AS x) AS w) AS c
            CROSS JOIN LATERAL (SELECT array_agg(w.e) AS e, sum(w.e) AS z
                                FROM   (SELECT gptsql.weight_exp(x - scores.top) AS e
                                        FROM   unnest(scores.tail_scores) AS x) AS w) AS t
    ), mixed AS (                       -- Σ weight × value, over the chunks, then over the tail
            SELECT  softmax.place, softmax.head, softmax.z, softmax.chunk_e, softmax.tail_e,
                    CASE WHEN by_chunk.r IS NULL THEN tail.mixed
                         ELSE tail.mixed                           -- each dimension's C products added up
                              + ARRAY(SELECT  inner_product(subvector(by_chunk.r, i * config.c + 1, config.c), config.ones)
                                      FROM    generate_series(0, config.head_dim - 1) AS i)::vector
                    END AS mixed
            FROM    config, softmax
            CROSS JOIN LATERAL (         -- a chunk's values (dimension-major) times its weights repeated head_dim times
                    SELECT  sum(ch.v * tiled.e) AS r
                    FROM    gptsql.kv_chunk ch
                    CROSS JOIN LATERAL (SELECT softmax.chunk_e[ch.chunk * config.c + 1 : ch.chunk * config.c + config.c]::vector AS e
                                        OFFSET 0) AS t0
                    CROSS JOIN LATERAL (SELECT t0.e || t0.e AS e OFFSET 0) AS t1         -- doubled, then cut
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 2 THEN t1.e || t1.e ELSE t1.e END AS e OFFSET 0) AS t2
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 4 THEN t2.e || t2.e ELSE t2.e END AS e OFFSET 0) AS t3
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 8 THEN t3.e || t3.e ELSE t3.e END AS e OFFSET 0) AS t4
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 16 THEN t4.e || t4.e ELSE t4.e END AS e OFFSET 0) AS t5
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 32 THEN t5.e || t5.e ELSE t5.e END AS e OFFSET 0) AS t6
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 64 THEN t6.e || t6.e ELSE t6.e END AS e OFFSET 0) AS t7
                    CROSS JOIN LATERAL (SELECT CASE WHEN config.head_dim > 128 THEN t7.e || t7.e ELSE t7.e END AS e OFFSET 0) AS t8
                    CROSS JOIN LATERAL (SELECT subvector(t8.e, 1, config.c * config.head_dim) AS e OFFSET 0) AS tiled
                    WHERE   ch.run_id = run AND ch.block = attend.block AND ch.head = softmax.head
                      AND   ch.chunk < softmax.chunks
            ) by_chunk
            CROSS JOIN LATERAL (SELECT  sum(u.v * gptsql.fill(u.e, config.head_dim)) AS mixed
                                FROM    unnest(softmax.tail_values, softmax.tail_e) AS u(v, e)) AS tail
    ), result AS (
            SELECT  mixed.place, mixed.head, mixed.mixed * gptsql.fill(1 / mixed.z, config.head_dim) AS z,
                    CASE WHEN config.recording     -- for exploring the run: who attended to whom
                         THEN ARRAY(SELECT e / mixed.z FROM unnest(coalesce(mixed.chunk_e, '{}') || mixed.tail_e) AS e)
                    END AS weights
            FROM    config, mixed
    ), recorded AS (
            INSERT INTO gptsql.attention_row (run_id, block, head, place, weights)
            SELECT  run, block, result.head, result.place, result.weights
            FROM    result
            WHERE   result.weights IS NOT NULL
    )
    SELECT  result.place, result.head, result.z
    FROM    result
$$;

-- Two statements: c_attn's q, k and v of the new places go into the KV cache first, so that every
-- query then reads all of its keys, new and cached alike (a new place's keys taken from arrays
-- instead cost 2.5 times as much per key); then attend() and the projection. Generic plans: custom
-- ones were planned anew at every call. No sequential scans: the cache's statistics swing between
-- empty (after a vacuum between runs) and large, and a plan made while it looked empty scanned all
-- of it in every block.
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

    WITH attended AS (
            SELECT  a.place, a.head, a.z
            FROM    gptsql.model m,
                    gptsql.attend(run, model, block, start, cardinality(x), 0, m.n_head) AS a
            WHERE   m.id = model
    ), merged AS (                      -- the heads side by side again, n_embd wide
            SELECT  place, gptsql.concat(z ORDER BY head) AS z
            FROM    attended
            GROUP BY place
    )
    SELECT  array_agg(y ORDER BY place)
    FROM    gptsql.matmul(model, block, 'attn_proj', ARRAY(SELECT z FROM merged ORDER BY place))
$$;
