-- 04_attention.sql — causal multi-head self-attention with a KV cache, over a share of the heads.
--
-- Heads are counted by their keys and values: n_kv_head of them, each read by n_head / n_kv_head
-- query heads (GPT-2: one each; the Llama family's grouped-query attention: several). The Llama
-- family turns q and k by their place first (rotary embeddings, gptsql.rope).
--
-- x holds the normalized inputs of a batch of new places (each a place of a run); a share of the
-- heads [head_lo, head_hi) adds their queries, keys and values to gptsql.kv_cache, which holds those
-- of the earlier places, attends, and returns its columns of the projection: one partial n_embd
-- vector per place. The shares' partials add up to the attention output (06_blocks.sql); one
-- backend is one share of all the heads.
--
-- A query reads its keys in two ways. The keys of whole chunks of C places (gptsql.kv_chunk, C =
-- chunk_places(head_dim)) are scored from one row per chunk, and the chunk's values are mixed by
-- one pgvector product: values stored dimension-major times the chunk's softmax weights repeated
-- head_dim times, summed over the chunks, then each dimension's C products added up once per query.
-- The keys after the last whole chunk (fewer than C, the query's own among them) are read one row
-- each from gptsql.kv_cache, as are all keys of a short context. All scores are taken first, so
-- exp() is relative to the top score: every weight is in [0, 1] and one pass over the keys does.

-- exp() of an attention score minus a reference score: 0 below e^-46 (1e-20), where a weight no
-- longer changes a float4 sum next to the reference (weight 1), and where pgvector would call the
-- product of a value vector with it an underflow.
CREATE FUNCTION gptsql.weight_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN x < -46 THEN 0 ELSE exp(x) END;
END;

-- Places per kv_chunk row for a head width: k and v of C places stay under a page together
-- (C * head_dim <= 1000 floats each). 0, no chunks, for heads too wide to gain from them.
CREATE FUNCTION gptsql.chunk_places(head_dim int)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN head_dim <= 250 THEN 1000 / head_dim ELSE 0 END;
END;

-- The whole chunks a query at `place` reads from gptsql.kv_chunk: those before its own place (its
-- own key stays in the tail, so the tail's softmax sum is never empty), and none while the context
-- is short (a chunk row costs more than the few keys it saves there).
CREATE FUNCTION gptsql.chunks_read(place int, c int)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN c > 0 AND place / c >= 4 THEN place / c ELSE 0 END;
END;

-- Heads [lo, hi) of share `share` of `shares`: n heads cut as evenly as they go, the larger parts
-- first. Share 0 runs in the calling backend and the others pay for an exchange (their call and
-- answer as text), so the first shares take what does not divide (SmolLM2's 3 key/value heads over
-- two shares: 2 + 1).
CREATE FUNCTION gptsql.share_of(n int, share int, shares int, OUT lo int, OUT hi int)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT share * (n / shares) + least(share, n % shares), (share + 1) * (n / shares) + least(share + 1, n % shares);
END;

-- q·k / sqrt(d) of one query (place, head) against the keys at places first .. place (the causal
-- mask): one index range of the KV cache, in the order of the places. OFFSET 0 keeps `score` a
-- column: PostgreSQL inlines this function into its caller, and a flattened subquery would put the
-- inner product into every expression that reads the score (five inner products a key, not one).
CREATE FUNCTION gptsql.attention_scores(run bigint, block int, place int, head int, q vector,
                                        head_dim int, first int)
RETURNS TABLE (key_place int, v vector, score float8)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  c.place, c.v, inner_product(attention_scores.q, c.k) / sqrt(head_dim)   -- the query's q, not c.q
    FROM    gptsql.kv_cache c
    WHERE   c.run_id = run AND c.block = attention_scores.block AND c.head = attention_scores.head
      AND   c.place BETWEEN first AND attention_scores.place
    ORDER BY c.place
    OFFSET  0;
END;

-- The attention of key/value heads [head_lo, head_hi) for a batch of new places (place n of the
-- batch is places[n] of runs[n]), whose q, k and v are in the KV cache already: per place and query
-- head the mix of values z (head_dim wide), and the weights when records[n] (for exploring the run).
-- Generic plans: custom ones were planned anew at every call. No sequential scans: the cache's
-- statistics swing between empty (after a vacuum between runs) and large, and a plan made while it
-- looked empty scanned all of it in every block.
CREATE FUNCTION gptsql.attend(model int, block int, runs bigint[], places int[], records boolean[],
                              head_lo int, head_hi int)
RETURNS TABLE (n int, head int, z vector, weights float8[])
LANGUAGE sql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
BEGIN ATOMIC
    -- The chunks completed by these places (and any before them not made yet) become kv_chunk rows:
    -- keys side by side, values transposed to dimension-major.
    WITH config AS (
            SELECT  m.n_embd / m.n_head AS head_dim, gptsql.chunk_places(m.n_embd / m.n_head) AS c
            FROM    gptsql.model m
            WHERE   m.id = model
    ), ends AS (                        -- per run, where its context ends after this batch
            SELECT  b.run, max(b.place) + 1 AS stop
            FROM    unnest(runs, places) AS b(run, place)
            GROUP BY b.run
    )
    INSERT INTO gptsql.kv_chunk (run_id, block, head, chunk, k, v)
    SELECT  ends.run, block, h.head, todo.chunk,
            (SELECT  gptsql.concat(kc.k ORDER BY kc.place)
             FROM    gptsql.kv_cache kc
             WHERE   kc.run_id = ends.run AND kc.block = attend.block AND kc.head = h.head
               AND   kc.place BETWEEN todo.chunk * config.c AND todo.chunk * config.c + config.c - 1),
            (SELECT  ARRAY(SELECT  rows.a[i % config.c + 1][i / config.c + 1]     -- element i of value j, i-major
                           FROM    generate_series(0, config.head_dim * config.c - 1) AS i)::vector
             FROM    (SELECT  array_agg(kc.v::real[] ORDER BY kc.place) AS a          -- C x head_dim
                      FROM    gptsql.kv_cache kc
                      WHERE   kc.run_id = ends.run AND kc.block = attend.block AND kc.head = h.head
                        AND   kc.place BETWEEN todo.chunk * config.c AND todo.chunk * config.c + config.c - 1) AS rows)
    FROM    config
    CROSS JOIN ends
    CROSS JOIN generate_series(head_lo, head_hi - 1) AS h(head)
    CROSS JOIN LATERAL (SELECT  coalesce(max(ch.chunk) + 1, 0) AS next
                        FROM    gptsql.kv_chunk ch
                        WHERE   ch.run_id = ends.run AND ch.block = attend.block AND ch.head = h.head) AS made
    CROSS JOIN LATERAL generate_series(made.next, ends.stop / nullif(config.c, 0) - 1) AS todo(chunk)
    WHERE   gptsql.chunks_read(ends.stop - 1, config.c) > 0;      -- never with C = 0 (no chunks)

    WITH config AS (
            SELECT  n_embd / n_head AS head_dim, n_head / n_kv_head AS g, gptsql.chunk_places(n_embd / n_head) AS c,
                    gptsql.fill(1, greatest(gptsql.chunk_places(n_embd / n_head), 1)) AS ones
            FROM    gptsql.model m
            WHERE   m.id = model
    ), prompts AS (                     -- runs that bring several places (a prompt), and their keys then
            SELECT  b.run, max(b.place) + 1 AS n_keys
            FROM    unnest(runs, places) AS b(run, place)
            GROUP BY b.run
            HAVING  count(*) > 1
    ), queries AS MATERIALIZED (        -- per new place and query head: its q, its key/value head (kv), and
                                        -- the whole chunks it reads
            SELECT  b.n::int AS n, b.run, b.place, b.record, c.head AS kv, c.head * config.g + j AS head,
                    subvector(c.q, j * config.head_dim + 1, config.head_dim) AS q,
                    gptsql.chunks_read(b.place, config.c) AS chunks, prompts.n_keys
            FROM    config
            CROSS JOIN unnest(runs, places, records) WITH ORDINALITY AS b(run, place, record, n)
            LEFT JOIN prompts ON prompts.run = b.run
            CROSS JOIN generate_series(head_lo, head_hi - 1) AS h(head)
            JOIN    gptsql.kv_cache c
                    ON c.run_id = b.run AND c.block = attend.block AND c.head = h.head AND c.place = b.place
            CROSS JOIN generate_series(0, config.g - 1) AS j
    ), scores AS MATERIALIZED (         -- q·k / sqrt(d) of every key at or before the query (the causal mask)
            SELECT  queries.n, queries.head, queries.kv, queries.record, queries.run, queries.chunks,
                    queries.place, queries.n_keys,
                    by_chunk.scores AS chunk_scores, tail.scores AS tail_scores, tail.vs AS tail_values,
                    greatest(by_chunk.top, tail.top) AS top
            FROM    config, queries
            CROSS JOIN LATERAL (         -- whole chunks: C scores from each kv_chunk row (chunks x C)
                    SELECT  array_agg(one.scores ORDER BY ch.chunk) AS scores, max(one.top) AS top
                    FROM    gptsql.kv_chunk ch
                    CROSS JOIN LATERAL (
                            SELECT  array_agg(a.score) AS scores, max(a.score) AS top     -- in j's order, as generated
                            FROM    (SELECT  j, inner_product(queries.q, subvector(ch.k, j * config.head_dim + 1,
                                                                                   config.head_dim))
                                                 / sqrt(config.head_dim) AS score   -- as attention_scores divides
                                     FROM    generate_series(0, config.c - 1) AS j
                                     OFFSET  0) AS a      -- the score a column: one inner product a key
                    ) AS one
                    WHERE   ch.run_id = queries.run AND ch.block = attend.block AND ch.head = queries.kv
                      AND   ch.chunk < queries.chunks
            ) by_chunk
            CROSS JOIN LATERAL (         -- the keys after them, the query's own last: one cache row each
                    SELECT  array_agg(t.score) AS scores, max(t.score) AS top,      -- in place order
                            array_agg(t.v) FILTER (WHERE queries.n_keys IS NULL) AS vs   -- (a prompt mixes from V transposed)
                    FROM    gptsql.attention_scores(queries.run, block, queries.place, queries.kv, queries.q,
                                                    config.head_dim, queries.chunks * config.c) AS t
            ) tail
    ), softmax AS (                     -- exp() relative to the top score: every weight in [0, 1]
            SELECT  scores.n, scores.head, scores.kv, scores.record, scores.run, scores.chunks, scores.place, scores.n_keys,
                    c.e AS chunk_e, t.e AS tail_e, coalesce(c.z, 0) + t.z AS z, scores.tail_values
            FROM    scores
            CROSS JOIN LATERAL (SELECT array_agg(w.e) AS e, sum(w.e) AS z      -- flat, in (chunk, place) order
                                FROM   (SELECT gptsql.weight_exp(x - scores.top) AS e
                                        FROM   unnest(scores.chunk_scores) AS x) AS w) AS c
            CROSS JOIN LATERAL (SELECT array_agg(w.e) AS e, sum(w.e) AS z
                                FROM   (SELECT gptsql.weight_exp(x - scores.top) AS e
                                        FROM   unnest(scores.tail_scores) AS x) AS w) AS t
    ), mixed AS (                       -- Σ weight × value, over the chunks, then over the tail
            SELECT  softmax.n, softmax.head, softmax.record, softmax.z, softmax.chunk_e, softmax.tail_e,
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
                    WHERE   ch.run_id = softmax.run AND ch.block = attend.block AND ch.head = softmax.kv
                      AND   ch.chunk < softmax.chunks
            ) by_chunk
            CROSS JOIN LATERAL (SELECT  sum(u.v * gptsql.fill(u.e, config.head_dim)) AS mixed
                                FROM    unnest(softmax.tail_values, softmax.tail_e) AS u(v, e)) AS tail
            WHERE   softmax.n_keys IS NULL
    ), values_t AS MATERIALIZED (       -- a prompt's values dimension-major: per key/value head, head_dim
                                        -- vectors over the places 0 .. n_keys - 1 (V transposed)
            SELECT  prompts.run, h.head,
                    ARRAY(SELECT  ARRAY(SELECT rows.v[p][i] FROM generate_series(1, prompts.n_keys) AS p)::vector
                          FROM    generate_series(1, config.head_dim) AS i) AS vt
            FROM    config, prompts
            CROSS JOIN generate_series(head_lo, head_hi - 1) AS h(head)
            CROSS JOIN LATERAL (SELECT  array_agg(c.v::real[] ORDER BY c.place) AS v
                                FROM    gptsql.kv_cache c
                                WHERE   c.run_id = prompts.run AND c.block = attend.block AND c.head = h.head
                                  AND   c.place < prompts.n_keys) AS rows
    ), prompt_mixed AS (                -- a prompt's queries: Σ weight × value as one inner product per row of
                                        -- V transposed, the weights 0 past the query's own place
            SELECT  softmax.n, softmax.head, softmax.record, softmax.z, softmax.chunk_e, softmax.tail_e,
                    ARRAY(SELECT  inner_product(weights.e, v.vt)
                          FROM    unnest(values_t.vt) WITH ORDINALITY AS v(vt, i)
                          ORDER BY v.i)::vector AS mixed
            FROM    softmax
            JOIN    values_t ON values_t.run = softmax.run AND values_t.head = softmax.kv
            CROSS JOIN LATERAL (SELECT  ((coalesce(softmax.chunk_e, '{}') || softmax.tail_e)::real[]
                                         || array_fill(0::real, ARRAY[softmax.n_keys - softmax.place - 1]))::vector AS e
                                OFFSET  0) AS weights
            WHERE   softmax.n_keys IS NOT NULL
    )
    SELECT  every.n, every.head, every.mixed * gptsql.fill(1 / every.z, config.head_dim),
            CASE WHEN every.record     -- for exploring the run: who attended to whom
                 THEN ARRAY(SELECT e / every.z FROM unnest(coalesce(every.chunk_e, '{}') || every.tail_e) AS e)
            END
    FROM    config, (SELECT * FROM mixed UNION ALL SELECT * FROM prompt_mixed) AS every;
END;

-- The projection's rows cut to the columns of heads [head_lo, head_hi): what a share of the heads
-- multiplies instead of every whole row with a subvector (0.6-0.9 ms a block instead of 1.2-1.4 on
-- the 124M shape). All the heads read gptsql.linear's own rows; a split of a model is made once
-- (gptsql.projection_share), by a connection of its own before its first use (10_shares.sql).
-- Rows made by a concurrent call of the same split are kept (ON CONFLICT).
CREATE FUNCTION gptsql.prepare_projection_share(model int, head_lo int, head_hi int)
RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    INSERT INTO gptsql.projection_share (model_id, head_lo, head_hi, block, grp, idx, w, h, bias)
    SELECT  model, head_lo, head_hi, w.block, w.grp, w.idx,
            subvector(w.w, head_lo * width.cols + 1, (head_hi - head_lo) * width.cols),
            subvector(w.h, head_lo * width.cols + 1, (head_hi - head_lo) * width.cols),
            w.bias
    FROM    gptsql.model m
    CROSS JOIN LATERAL (SELECT m.n_embd / m.n_kv_head AS cols) AS width     -- a key/value head's query columns
    JOIN    gptsql.linear w ON w.model_id = m.id AND w.name = 'attn_proj' AND w.part = 0
    WHERE   m.id = model
      AND   (head_lo, head_hi) <> (0, m.n_kv_head)
      AND   NOT EXISTS (SELECT FROM gptsql.projection_share s
                        WHERE s.model_id = model AND s.head_lo = prepare_projection_share.head_lo
                          AND s.head_hi = prepare_projection_share.head_hi)
    ON CONFLICT DO NOTHING;
END;

-- The queries, keys and values of key/value heads [head_lo, head_hi) for a batch of places
-- (normalized inputs x at `places`): c_attn's units of those heads, per place and key/value head
-- its k and v and the q of its query heads side by side, q and k turned by their place where the
-- model has rotary embeddings (x * cos + swap(x) * sin, per query head).
CREATE FUNCTION gptsql.qkv(model int, block int, x vector[], places int[], head_lo int, head_hi int)
RETURNS TABLE (n int, head int, q vector, k vector, v vector)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH config AS (
            SELECT  m.n_head, m.n_kv_head, m.n_head / m.n_kv_head AS g, m.n_embd / m.n_head AS d
            FROM    gptsql.model m
            WHERE   m.id = model
    ), units AS (                       -- c_attn: per place one vector per query head, then k, then v heads
            SELECT  y.place, y.grp, y.y
            FROM    config, gptsql.matmul(model, block, 'c_attn', x,
                        gptsql.int_range(head_lo * config.g, head_hi * config.g)
                        || gptsql.int_range(config.n_head + head_lo, config.n_head + head_hi)
                        || gptsql.int_range(config.n_head + config.n_kv_head + head_lo,
                                            config.n_head + config.n_kv_head + head_hi)) AS y
    ), angles AS (                      -- the places' rotations (none for GPT-2)
            SELECT  p.n::int - 1 AS place, r.cos, r.sin
            FROM    gptsql.model m
            CROSS JOIN unnest(places) WITH ORDINALITY AS p(place, n)
            JOIN    gptsql.rope r ON r.model_id = model AND r.place = p.place
            WHERE   m.id = model AND m.rope_theta IS NOT NULL
    ), turned AS (                      -- q and k turned by their place; v as it is
            SELECT  units.place, units.grp,
                    CASE WHEN angles.cos IS NULL OR units.grp >= config.n_head + config.n_kv_head THEN units.y
                         ELSE units.y * angles.cos
                              + (subvector(units.y, config.d / 2 + 1, config.d / 2) || subvector(units.y, 1, config.d / 2))
                                * angles.sin
                    END AS y
            FROM    config, units
            LEFT JOIN angles ON angles.place = units.place
    ), queries AS (                     -- a key/value head's query heads side by side
            SELECT  turned.place, turned.grp / config.g AS head, gptsql.concat(turned.y ORDER BY turned.grp) AS q
            FROM    config, turned
            WHERE   turned.grp < config.n_head
            GROUP BY turned.place, turned.grp / config.g
    )
    SELECT  queries.place + 1, queries.head, queries.q, k.y, v.y
    FROM    config
    CROSS JOIN queries
    JOIN    turned k ON k.place = queries.place AND k.grp = config.n_head + queries.head
    JOIN    turned v ON v.place = queries.place AND v.grp = config.n_head + config.n_kv_head + queries.head;
END;

-- Share `share` of `shares` of a block's attention, for a batch of places (normalized inputs x):
-- its heads' q, k and v into the KV cache first (so that every query then reads all of its keys,
-- new and cached alike: a new place's keys taken from arrays instead cost 2.5 times as much per
-- key), attend(), then its columns of the projection (the first share adds the bias). Returns its
-- partial n_embd vector per place, and the attention rows to record (the MLP's shares return the
-- same type, with no rows).
CREATE TYPE gptsql.share_part AS (partial vector[], recorded gptsql.attention_row[]);

CREATE FUNCTION gptsql.attention_share(model int, block int, runs bigint[], places int[], records boolean[],
                                       x vector[], share int, shares int)
RETURNS gptsql.share_part
LANGUAGE sql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
BEGIN ATOMIC
    INSERT INTO gptsql.kv_cache (run_id, block, head, place, q, k, v)
    SELECT  runs[a.n], block, a.head, places[a.n], a.q, a.k, a.v
    FROM    gptsql.model m, gptsql.share_of(m.n_kv_head, share, shares) AS heads,
            gptsql.qkv(model, block, x, places, heads.lo, heads.hi) AS a
    WHERE   m.id = model;

    WITH heads AS (
            SELECT  s.lo, s.hi
            FROM    gptsql.model m, gptsql.share_of(m.n_kv_head, share, shares) AS s
            WHERE   m.id = model
    ), attended AS MATERIALIZED (
            SELECT  a.n, a.head, a.z, a.weights
            FROM    heads, gptsql.attend(model, block, runs, places, records, heads.lo, heads.hi) AS a
    ), merged AS (                      -- the share's heads side by side
            SELECT  n, gptsql.concat(z ORDER BY head) AS z
            FROM    attended
            GROUP BY n
    ), projected AS (                   -- its columns of the projection (the share at head 0 adds the bias)
            SELECT  p.place + 1 AS n, p.y
            FROM    heads
            JOIN    gptsql.model m ON m.id = model
            CROSS JOIN LATERAL gptsql.matmul(model, block, 'attn_proj', ARRAY(SELECT z FROM merged ORDER BY n), ARRAY[0],
                                             heads => CASE WHEN (heads.lo, heads.hi) <> (0, m.n_kv_head)
                                                           THEN ARRAY[heads.lo, heads.hi] END) AS p
    )
    SELECT  ROW((SELECT array_agg(y ORDER BY n) FROM projected),
                (SELECT array_agg(ROW(runs[a.n], block, a.head, places[a.n], a.weights)::gptsql.attention_row
                                  ORDER BY a.n, a.head)
                 FROM   attended a
                 WHERE  a.weights IS NOT NULL))::gptsql.share_part;
END;
