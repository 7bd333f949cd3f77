-- 12_batch.sql — the model over many texts: completions of many prompts in one pass per step, a
-- table's column completed, texts scored, and a generation streamed to SQL clients.
--
-- A batch is a set of runs of one model, each with its own prompt, KV cache, sampling settings,
-- seed and stop: gptsql.steps() takes one step of all of them together, every new place through
-- every block in one pass over the weights. Each run's tokens are the tokens it would choose alone.

-- Step started runs together until each has its max_tokens or ends its text: (run, completion),
-- the runs finished. What gptsql.generate() does for one run, for a batch.
CREATE FUNCTION gptsql.generate_runs(runs bigint[])
RETURNS TABLE (run bigint, completion text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    live     bigint[];                  -- the runs still generating (none with max_tokens 0)
    fed      int[];
    counts   int[];
    left_    int[];                     -- tokens each live run may still generate
    stop     int[];                     -- the token that ends each live run's text
BEGIN
    SELECT array_agg(t.token ORDER BY u.n, t.place) INTO fed             -- the prompts first
    FROM   unnest(runs) WITH ORDINALITY AS u(run, n)
    JOIN   gptsql.run r ON r.id = u.run AND r.max_tokens > 0
    JOIN   gptsql.run_token t ON t.run_id = u.run AND t.is_prompt;
    SELECT coalesce(array_agg(u.run ORDER BY u.n), '{}'),
           array_agg((SELECT count(*) FROM gptsql.run_token t WHERE t.run_id = u.run AND t.is_prompt)::int ORDER BY u.n),
           array_agg(r.max_tokens ORDER BY u.n), array_agg(k.eos ORDER BY u.n)
    INTO   live, counts, left_, stop
    FROM   unnest(runs) WITH ORDINALITY AS u(run, n)
    JOIN   gptsql.run r ON r.id = u.run AND r.max_tokens > 0
    LEFT JOIN gptsql.tokenizer k ON k.model_id = r.model_id;
    BEGIN
        WHILE cardinality(live) > 0 LOOP
            SELECT array_agg(s.run ORDER BY s.n), array_agg(s.token ORDER BY s.n),
                   array_agg(left_[s.n] - 1 ORDER BY s.n), array_agg(stop[s.n] ORDER BY s.n)
            INTO   live, fed, left_, stop
            FROM   gptsql.steps(live, fed, counts) WITH ORDINALITY AS s(run, token, bytes, probability, logit, n)
            WHERE  left_[s.n] > 1 AND s.token IS DISTINCT FROM stop[s.n];    -- the runs that go on
            live := coalesce(live, '{}');
            counts := array_fill(1, ARRAY[cardinality(live)]);
        END LOOP;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM gptsql.forget_cache(runs);      -- what the other backends wrote goes too
        RAISE;
    END;
    PERFORM gptsql.finish_run(f.run) FROM unnest(runs) AS f(run);
    RETURN QUERY
        SELECT  u.run, gptsql.detokenize(coalesce(array_agg(t.token ORDER BY t.place)
                                                  FILTER (WHERE t.token IS NOT NULL AND t.token IS DISTINCT FROM k.eos),
                                                  '{}'), m.name)
        FROM    unnest(runs) WITH ORDINALITY AS u(run, n)
        JOIN    gptsql.run r ON r.id = u.run
        JOIN    gptsql.model m ON m.id = r.model_id
        LEFT JOIN gptsql.tokenizer k ON k.model_id = m.id
        LEFT JOIN gptsql.run_token t ON t.run_id = u.run AND NOT t.is_prompt
        GROUP BY u.n, u.run, m.name
        ORDER BY u.n;
END
$$;

-- Completions of many prompts, generated together: (n, run, completion) for prompts[n], each a
-- recorded run with these settings (with a seed, each draws what it would draw alone).
CREATE FUNCTION gptsql.complete(prompts text[], max_tokens int DEFAULT 20, temperature float8 DEFAULT 0,
                                top_k int DEFAULT 0, top_p float8 DEFAULT 1, seed bigint DEFAULT NULL,
                                model text DEFAULT NULL, record boolean DEFAULT false)
RETURNS TABLE (n int, run bigint, completion text)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH started AS MATERIALIZED (
            SELECT  p.n::int AS n, s.run_id AS run
            FROM    unnest(prompts) WITH ORDINALITY AS p(prompt, n)
            CROSS JOIN LATERAL gptsql.start_run(model, p.prompt, max_tokens, temperature, top_k, top_p, seed,
                                                record, kind => 'generate') AS s
    )
    SELECT  started.n, g.run, g.completion
    FROM    gptsql.generate_runs(ARRAY(SELECT started.run FROM started ORDER BY started.n)) AS g
    JOIN    started ON started.run = g.run
    ORDER BY started.n;
END;

-- A table's column of completions: for each row whose `completion_column` is NULL, the completion of
-- its `prompt_column`, generated in batches of batch_size rows. Returns how many rows it completed.
CREATE FUNCTION gptsql.complete_column(tab regclass, prompt_column name, completion_column name,
                                       max_tokens int DEFAULT 20, temperature float8 DEFAULT 0,
                                       seed bigint DEFAULT NULL, model text DEFAULT NULL, batch_size int DEFAULT 16)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    done  bigint := 0;
    batch record;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be 1 or more, got %', coalesce(batch_size::text, 'NULL');
    END IF;
    FOR batch IN EXECUTE format(
            'SELECT array_agg(ctid ORDER BY ctid) AS rows, array_agg(%1$I::text ORDER BY ctid) AS prompts
             FROM   (SELECT ctid, %1$I, (row_number() OVER (ORDER BY ctid) - 1) / %3$s AS batch
                     FROM %2$s WHERE %4$I IS NULL AND %1$I IS NOT NULL) AS todo
             GROUP BY batch ORDER BY batch', prompt_column, tab, batch_size, completion_column) LOOP
        EXECUTE format('UPDATE %s AS t SET %I = c.completion
                        FROM   gptsql.complete($1, $2, $3, seed => $4, model => $5) AS c
                        WHERE  t.ctid = ($6)[c.n]', tab, completion_column)
        USING batch.prompts, max_tokens, temperature, seed, model, batch.rows;
        done := done + cardinality(batch.rows);
    END LOOP;
    RETURN done;
END
$$;

-- A generation as rows, one per token, each as it is chosen: read with a cursor (in psql,
-- \set FETCH_COUNT 1), `select gptsql.stream(...)` shows the text as it grows. The rows are the
-- pieces of text that each token completes (a token that ends mid-character waits for the next).
-- Called in the select list: a set-returning function in FROM would be run to its end first.
CREATE FUNCTION gptsql.stream(prompt text, max_tokens int DEFAULT 20, temperature float8 DEFAULT 0,
                              top_k int DEFAULT 0, top_p float8 DEFAULT 1, seed bigint DEFAULT NULL,
                              model text DEFAULT NULL, record boolean DEFAULT true)
RETURNS SETOF text
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH RECURSIVE started AS MATERIALIZED (
            SELECT  s.*, m.name AS model_name
            FROM    gptsql.start_run(model, prompt, max_tokens, temperature, top_k, top_p, seed, record) AS s
            JOIN    gptsql.model m ON m.id = s.model_id
    ), generation AS (                  -- each step's token, and the text so far before and after it
            SELECT  0 AS step, started.tokens AS fresh, 0 AS start, '{}'::int[] AS generated, NULL::int AS token,
                    '' AS before, '' AS upto
            FROM    started
            UNION ALL
            SELECT  g.step + 1, ARRAY[n.token], g.start + cardinality(g.fresh), g.generated || n.token, n.token,
                    g.upto, gptsql.detokenize(array_remove(g.generated || n.token, started.eot), started.model_name)
            FROM    generation g, started
            CROSS JOIN LATERAL gptsql.step(started.run_id, g.fresh, g.start) AS n
            WHERE   g.step < max_tokens AND g.token IS DISTINCT FROM started.eot
    )
    SELECT  substr(g.upto, length(g.before) + 1)
            || CASE WHEN g.step = max_tokens OR g.token = started.eot     -- the last: the run is done
                    THEN coalesce(gptsql.finish_run(started.run_id)::text, '') ELSE '' END
    FROM    generation g, started
    WHERE   g.step > 0;
END;

-- The log-probability the model gives each text, token by token after the first: (n, tokens,
-- logprob, perplexity, token_logprobs) for texts[n], every text's places through the blocks in one
-- pass. logprob is the sum of log p(token | the tokens before it), perplexity exp(-logprob / the
-- tokens scored). A text of one token has nothing to score (logprob 0, perplexity NULL).
CREATE FUNCTION gptsql.score(texts text[], model text DEFAULT NULL)
RETURNS TABLE (n int, tokens int, logprob float8, perplexity float8, token_logprobs float8[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m        int := gptsql.model_id(model);
    started  record;
    runs     bigint[] := '{}';
    owners   bigint[] := '{}';
    places   int[] := '{}';
    fed      int[] := '{}';
    shares   int;
    hidden   vector[];
BEGIN
    FOR started IN SELECT t.n, s.run_id, s.tokens
                   FROM   unnest(texts) WITH ORDINALITY AS t(text, n)
                   CROSS JOIN LATERAL gptsql.start_run(model, t.text, 0, record => false, kind => 'score') AS s
                   ORDER BY t.n LOOP
        runs := runs || started.run_id;
        owners := owners || array_fill(started.run_id, ARRAY[cardinality(started.tokens)]);
        places := places || ARRAY(SELECT generate_series(0, cardinality(started.tokens) - 1));
        fed := fed || started.tokens;
    END LOOP;
    shares := gptsql.shares(m);
    BEGIN
        hidden := gptsql.forward(m, owners, places, fed, array_fill(false, ARRAY[cardinality(fed)]), shares);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM gptsql.forget_cache(runs);      -- what the other backends wrote goes too
        RAISE;
    END;
    RETURN QUERY
        WITH targets AS MATERIALIZED (  -- place i predicts the token at i + 1 of the same text
                SELECT  r.n, i.i, gptsql.logit_of(m, hidden[i.i], fed[i.i + 1]) AS logit
                FROM    unnest(runs) WITH ORDINALITY AS r(run, n)
                CROSS JOIN LATERAL generate_subscripts(owners, 1) AS i(i)
                WHERE   owners[i.i] = r.run AND i.i < cardinality(owners) AND owners[i.i + 1] = r.run
        ), softmax AS (                 -- every scored place's peak and sum from one pass over the vocabulary
                SELECT  g.n, g.peak, g.z
                FROM    gptsql.choose_greedy(m, ARRAY(SELECT hidden[t.i] FROM targets t ORDER BY t.i), shares) AS g
        ), scored AS (                  -- log p = logit - peak - ln z
                SELECT  t.n, t.i, t.logit - softmax.peak - ln(softmax.z) AS logprob
                FROM    (SELECT t.*, row_number() OVER (ORDER BY t.i) AS place FROM targets t) AS t
                JOIN    softmax ON softmax.n = t.place
        )
        SELECT  r.n::int, (SELECT count(*)::int FROM unnest(owners) AS o WHERE o = r.run),
                coalesce(sum(s.logprob), 0), exp(-avg(s.logprob)),
                coalesce(array_agg(s.logprob ORDER BY s.i) FILTER (WHERE s.i IS NOT NULL), '{}')
        FROM    unnest(runs) WITH ORDINALITY AS r(run, n)
        LEFT JOIN scored s ON s.n = r.n
        GROUP BY r.n, r.run
        ORDER BY r.n;
    PERFORM gptsql.finish_run(f.run) FROM unnest(runs) AS f(run);
END
$$;
