-- 08_generate.sql — runs: start one, step it token by token, finish it; generate() and predict().
--
-- Every prediction and generation is a row of gptsql.run. A step feeds the new tokens through
-- forward() (earlier places come from the KV cache) and chooses one more token.

CREATE FUNCTION gptsql.start_run(model text, prompt text, max_tokens int DEFAULT 10,
                                 temperature float8 DEFAULT 0, top_k int DEFAULT 0,
                                 top_p float8 DEFAULT 1, seed bigint DEFAULT NULL,
                                 record boolean DEFAULT true, kind text DEFAULT 'generate',
                                 truncate_left boolean DEFAULT false,
                                 allow_special boolean DEFAULT false,
                                 OUT run_id bigint, OUT model_id int, OUT tokens int[],
                                 OUT eot int)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m gptsql.model;
    room int;
    longest int;     -- bytes of the vocabulary's longest token
BEGIN
    SELECT * INTO m FROM gptsql.model WHERE id = gptsql.model_id(start_run.model);
    IF prompt IS NULL THEN
        RAISE EXCEPTION 'prompt is NULL' USING HINT = 'give a text; an empty text starts from <|endoftext|>';
    END IF;
    IF record IS NULL OR truncate_left IS NULL OR allow_special IS NULL THEN
        RAISE EXCEPTION '% is NULL',
            CASE WHEN record IS NULL THEN 'record' WHEN truncate_left IS NULL THEN 'truncate_left' ELSE 'allow_special' END
            USING HINT = 'give true or false (record: keep the activations; truncate_left: keep the end of a long '
                         'prompt; allow_special: read <|endoftext|> as the special token)';
    END IF;
    IF max_tokens IS NULL OR max_tokens < 0 THEN
        RAISE EXCEPTION 'max_tokens must be 0 or more, got %', coalesce(max_tokens::text, 'NULL')
            USING HINT = 'the number of new tokens to generate; 0 only reads the prompt';
    END IF;
    IF temperature IS NULL OR temperature < 0 OR temperature = 'NaN' OR temperature = 'Infinity' THEN
        RAISE EXCEPTION 'temperature must be a number >= 0 (0 is greedy), got %', coalesce(temperature::text, 'NULL')
            USING HINT = '0 always takes the most probable token; 0.7 to 1 samples; higher is more random';
    END IF;
    IF top_k IS NULL OR top_k < 0 OR top_k > m.n_vocab THEN
        RAISE EXCEPTION 'top_k must be between 0 (no limit) and the vocabulary size %, got %', m.n_vocab,
            coalesce(top_k::text, 'NULL')
            USING HINT = 'sample among the k most probable tokens; 0 keeps them all';
    END IF;
    IF top_p IS NULL OR NOT (top_p > 0 AND top_p <= 1) THEN
        RAISE EXCEPTION 'top_p must be in (0, 1], got %', coalesce(top_p::text, 'NULL')
            USING HINT = 'sample among the most probable tokens whose probabilities add up to top_p; 1 keeps them all';
    END IF;
    IF temperature > 0 AND temperature < 1e-3 THEN
        RAISE EXCEPTION 'temperature % is too small to divide logits by; give 0 (greedy) or at least 0.001', temperature
            USING HINT = '0 always takes the most probable token; 0.7 to 1 samples; higher is more random';
    END IF;
    -- The token that ends a text (the model's eos: <|endoftext|> for GPT-2, <|im_end|> for SmolLM2);
    -- a model made by hand may only spell it.
    SELECT coalesce((SELECT k.eos FROM gptsql.tokenizer k WHERE k.model_id = m.id),
                    (SELECT t.token FROM gptsql.token t WHERE t.model_id = m.id AND t.bytes = '<|endoftext|>'::bytea))
    INTO   eot;
    room := m.n_ctx - max_tokens;
    -- No token is longer than the vocabulary's longest, so the prompt's bytes divided by that
    -- length bound its token count from below: a prompt that cannot fit is refused before it is
    -- tokenized, in time linear in its length; --truncate left tokenizes only the tail it keeps.
    IF octet_length(prompt) > m.n_ctx AND NOT (truncate_left AND room > 0) THEN
        SELECT max(octet_length(t.bytes)) INTO longest FROM gptsql.token t WHERE t.model_id = m.id;
        IF ceil(octet_length(prompt)::numeric / longest) > m.n_ctx THEN
            RAISE EXCEPTION 'the prompt is at least % tokens (% bytes, no token is longer than %) but model "%" has a context window of % tokens',
                ceil(octet_length(prompt)::numeric / longest), octet_length(prompt), longest, m.name, m.n_ctx
                USING HINT = 'shorten the prompt, or keep its end with --truncate left';
        END IF;
    END IF;
    IF prompt = '' THEN
        -- a text's first token (GPT-2 starts a text after <|endoftext|>)
        tokens := ARRAY[coalesce((SELECT k.bos FROM gptsql.tokenizer k WHERE k.model_id = m.id), eot)];
    ELSE
        tokens := gptsql.tokenize(prompt, m.name, allow_special, last => CASE WHEN truncate_left AND room > 0 THEN room END);
    END IF;
    IF cardinality(tokens) > room THEN
        IF truncate_left AND room > 0 THEN
            tokens := tokens[cardinality(tokens) - room + 1:];
        ELSIF truncate_left THEN        -- keeping the end cannot help: max_tokens alone fills the window
            RAISE EXCEPTION 'max_tokens (%) leaves no room for the prompt in the context window of % tokens',
                max_tokens, m.n_ctx
                USING HINT = format('ask for at most %s new tokens', m.n_ctx - 1);
        ELSIF max_tokens = 0 OR cardinality(tokens) > m.n_ctx THEN
            RAISE EXCEPTION 'the prompt is % tokens but model "%" has a context window of % tokens',
                cardinality(tokens), m.name, m.n_ctx
                USING HINT = 'shorten the prompt, or keep its end with --truncate left';
        ELSE
            RAISE EXCEPTION 'the prompt (% token%) plus max_tokens (%) passes the context window of % tokens',
                cardinality(tokens), CASE WHEN cardinality(tokens) = 1 THEN '' ELSE 's' END, max_tokens, m.n_ctx
                USING HINT = format('ask for at most %s new tokens, or keep the end of the prompt with --truncate left',
                                    greatest(m.n_ctx - cardinality(tokens), 0));
        END IF;
    END IF;
    INSERT INTO gptsql.run (model_id, kind, prompt, max_tokens, temperature, top_k, top_p, seed, record)
    VALUES (m.id, kind, prompt, max_tokens, temperature, top_k, top_p, seed, record)
    RETURNING id INTO run_id;
    INSERT INTO gptsql.run_token (run_id, place, token, is_prompt)
    SELECT  start_run.run_id, n::int - 1, t, true
    FROM    unnest(tokens) WITH ORDINALITY AS p(t, n);
    model_id := m.id;
END
$$;

-- The checks a step makes before it feeds `tokens` (the places start, start + 1, ...) to a run:
-- the run is running, the tokens are in the vocabulary, start is where the run's cache ends, and
-- they fit in the context window. Returns the run.
CREATE FUNCTION gptsql.check_step(run bigint, tokens int[], start int)
RETURNS gptsql.run
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r        gptsql.run;
    m        gptsql.model;
    bad      int;
    cached   int;
BEGIN
    -- One step of a run at a time: the run's row stays locked until the step's statement ends, and
    -- a second connection stepping the same run is refused at once (it got a duplicate key).
    SELECT * INTO r FROM gptsql.run WHERE id = check_step.run FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND AND EXISTS (SELECT FROM gptsql.run WHERE id = check_step.run) THEN
        RAISE EXCEPTION 'run % is taking a step on another connection right now', run
            USING HINT = 'a run takes one step at a time, from the connection that drives it; start a run of your own';
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no run %', run USING HINT = 'start one with gptsql.start_run(...)';
    END IF;
    IF r.status <> 'running' THEN
        RAISE EXCEPTION 'run % is %, it cannot take more steps', run, r.status;
    END IF;
    IF tokens IS NULL OR cardinality(tokens) = 0 THEN
        RAISE EXCEPTION 'a step feeds at least one token, got %', coalesce(tokens::text, 'NULL')
            USING HINT = 'the first step feeds the prompt''s tokens (start_run returns them), each later one the token chosen before';
    END IF;
    SELECT * INTO m FROM gptsql.model WHERE id = r.model_id;
    SELECT t INTO bad FROM unnest(tokens) AS u(t) WHERE t IS NULL OR t < 0 OR t >= m.n_vocab LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'token % is not in the vocabulary of model "%"', coalesce(bad::text, 'NULL'), m.name
            USING HINT = format('token ids go from 0 to %s', m.n_vocab - 1);
    END IF;
    SELECT coalesce(max(k.place) + 1, 0) INTO cached
    FROM   gptsql.kv_cache k WHERE k.run_id = check_step.run AND k.block = 0 AND k.head = 0;
    IF start IS DISTINCT FROM cached THEN
        RAISE EXCEPTION 'run % has computed % places, so its next step starts at place %, not %', run, cached, cached,
            coalesce(start::text, 'NULL')
            USING HINT = 'start = how many tokens the run was fed before this step (the prompt included)';
    END IF;
    IF start + cardinality(tokens) > m.n_ctx THEN
        RAISE EXCEPTION 'run % is full: the context window of model "%" ends at % tokens', run, m.name, m.n_ctx
            USING HINT = 'start a new run, or keep the end of the prompt with --truncate left';
    END IF;
    RETURN r;
END
$$;

-- The fed tokens are the run's record too: a step fed several tokens (the SQL API allows it) keeps
-- them as generated-side tokens that no step chose (probability NULL); a fed token that differs
-- from the one recorded at its place replaces it, so the record says what was computed.
CREATE FUNCTION gptsql.record_fed(run bigint, tokens int[], start int)
RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO gptsql.run_token AS rt (run_id, place, token, is_prompt)
    SELECT  run, start + f.n::int - 1, f.t, false
    FROM    unnest(tokens) WITH ORDINALITY AS f(t, n)
    ON CONFLICT ON CONSTRAINT run_token_pkey DO UPDATE
    SET     token = excluded.token, probability = NULL, logit = NULL, elapsed_ms = NULL
    WHERE   rt.token <> excluded.token;
$$;

-- The last place's hidden state (after ln_f) once `tokens` (the places start, start + 1, ...) went
-- through every block of a run, over the session's shares (10_shares.sql) unless told.
CREATE FUNCTION gptsql.forward(run bigint, tokens int[], start int, shares int DEFAULT NULL)
RETURNS vector
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r gptsql.run;
    n int := cardinality(tokens);
BEGIN
    SELECT * INTO r FROM gptsql.run rr WHERE rr.id = forward.run;
    RETURN (gptsql.forward(r.model_id, array_fill(run, ARRAY[n]), ARRAY(SELECT generate_series(start, start + n - 1)),
                           tokens, array_fill(r.record, ARRAY[n]), coalesce(shares, gptsql.shares(r.model_id))))[n];
END
$$;

-- The step's uniform number: a hash of (seed, place) with a seed, else random().
CREATE FUNCTION gptsql.draw(r gptsql.run, place int)
RETURNS float8
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT CASE WHEN r.seed IS NULL THEN random() ELSE gptsql.uniform(r.seed, place) END;
END;

-- A chosen next token, as gptsql.choose() gives it.
CREATE TYPE gptsql.choice AS (token int, probability float8, logit float8,
                              top_tokens int[], top_probabilities float8[], top_logits float8[]);

-- One step of several runs of one model at once (a batch): run runs[i] is fed the next counts[i]
-- of `tokens` (the places after those it has computed), all of them through every block in one
-- pass over the weights, and chooses the token after them. One row per run, in the batch's order.
CREATE FUNCTION gptsql.steps(runs bigint[], tokens int[], counts int[])
RETURNS TABLE (run bigint, token int, bytes bytea, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    began    timestamptz := clock_timestamp();
    model    int;
    r        gptsql.run;
    fed      int[];
    start    int;
    offset_  int := 0;
    places   int[] := '{}';
    owners   bigint[] := '{}';
    records  boolean[] := '{}';
    lasts    int[] := '{}';     -- where each run's last place is in the batch
    shares   int;
    hidden   vector[];
    greedy   int[];             -- the runs (by their index in runs) that choose greedily
    chosen   gptsql.choice[];   -- their choices, when several choose together
    c        record;
BEGIN
    IF runs IS NULL OR cardinality(runs) = 0 OR cardinality(runs) <> cardinality(counts)
       OR cardinality(tokens) IS DISTINCT FROM (SELECT sum(n)::int FROM unnest(counts) AS n) THEN
        RAISE EXCEPTION 'a batch step needs runs, their tokens one after the other, and how many each run is fed'
            USING HINT = 'gptsql.steps(ARRAY[run, ...], ARRAY[its tokens..., the next run''s...], ARRAY[count, ...])';
    END IF;
    FOR i IN 1 .. cardinality(runs) LOOP
        fed := tokens[offset_ + 1 : offset_ + counts[i]];
        SELECT coalesce(max(k.place) + 1, 0) INTO start
        FROM   gptsql.kv_cache k WHERE k.run_id = runs[i] AND k.block = 0 AND k.head = 0;
        r := gptsql.check_step(runs[i], fed, start);
        IF model IS DISTINCT FROM r.model_id AND model IS NOT NULL THEN
            RAISE EXCEPTION 'run % is of another model than run %: a batch runs one model', runs[i], runs[1];
        END IF;
        model := r.model_id;
        PERFORM gptsql.record_fed(runs[i], fed, start);
        places := places || ARRAY(SELECT generate_series(start, start + counts[i] - 1));
        owners := owners || array_fill(runs[i], ARRAY[counts[i]]);
        records := records || array_fill(r.record, ARRAY[counts[i]]);
        offset_ := offset_ + counts[i];
        lasts := lasts || offset_;
    END LOOP;
    shares := gptsql.shares(model);
    hidden := gptsql.forward(model, owners, places, tokens, records, shares);
    -- A batch's greedy runs choose together: one pass over the vocabulary for all of them.
    SELECT array_agg(u.i ORDER BY u.i) INTO greedy
    FROM   unnest(runs) WITH ORDINALITY AS u(run, i) JOIN gptsql.run rr ON rr.id = u.run
    WHERE  rr.temperature = 0;
    IF cardinality(greedy) > 1 THEN
        SELECT array_agg(ROW(g.token, g.probability, g.logit, g.top_tokens, g.top_probabilities, g.top_logits)::gptsql.choice
                         ORDER BY g.n)
        INTO   chosen
        FROM   gptsql.choose_greedy(model, ARRAY(SELECT hidden[lasts[i]] FROM unnest(greedy) WITH ORDINALITY AS g(i, n)
                                                 ORDER BY g.n), shares) AS g;
    END IF;
    FOR i IN 1 .. cardinality(runs) LOOP
        SELECT * INTO r FROM gptsql.run rr WHERE rr.id = runs[i];
        IF chosen IS NOT NULL AND i = ANY (greedy) THEN
            c := chosen[array_position(greedy, i)];
        ELSE
            SELECT * INTO c
            FROM   gptsql.choose(model, hidden[lasts[i]], r.temperature, r.top_k, r.top_p,
                                 gptsql.draw(r, places[lasts[i]] + 1), shares);
        END IF;
        INSERT INTO gptsql.run_token (run_id, place, token, is_prompt, probability, logit, elapsed_ms)
        VALUES (runs[i], places[lasts[i]] + 1, c.token, false, c.probability, c.logit,
                extract(epoch FROM clock_timestamp() - began) * 1000);
        IF r.record THEN
            INSERT INTO gptsql.step_logit (run_id, place, rank, token, logit, probability)
            SELECT  runs[i], places[lasts[i]], n, t, l, p
            FROM    unnest(c.top_tokens, c.top_logits, c.top_probabilities) WITH ORDINALITY AS b(t, l, p, n);
        END IF;
        RETURN QUERY
            SELECT runs[i], c.token, t.bytes, c.probability, c.logit
            FROM   gptsql.token t
            WHERE  t.model_id = model AND t.token = c.token;
    END LOOP;
END
$$;

-- One step: feed `tokens` (the places start, start + 1, ...) and choose the token after them.
CREATE FUNCTION gptsql.step(run bigint, tokens int[], start int)
RETURNS TABLE (token int, bytes bytea, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM gptsql.check_step(run, tokens, start);      -- start where the run's cache ends
    RETURN QUERY
        SELECT s.token, s.bytes, s.probability, s.logit
        FROM   gptsql.steps(ARRAY[run], tokens, ARRAY[cardinality(tokens)]) AS s;
END
$$;

-- Part of a step: feed `tokens` into the run's KV cache (and its recorded activations) without
-- choosing a token. A long prompt goes in as chunks, the last one by step(), so that the client
-- can show progress and stop between them. Returns where the next chunk starts.
CREATE FUNCTION gptsql.feed(run bigint, tokens int[], start int)
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM gptsql.check_step(run, tokens, start);
    PERFORM gptsql.record_fed(run, tokens, start);
    PERFORM gptsql.forward(run, tokens, start);
    RETURN start + cardinality(tokens);
END
$$;

-- The scratch a run keeps while it runs (the KV cache and its chunks; no foreign keys, unlogged),
-- removed: when it finishes, when it was cut off, when it is dropped. The rows the session's other
-- backends wrote are removed by one of them too, so that they go even when this transaction does
-- not commit (a generation in psql that failed or was cancelled).
CREATE FUNCTION gptsql.forget_cache(runs bigint[], everywhere boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- There first: it must not wait for rows this transaction deletes (it would wait for us).
    IF everywhere AND EXISTS (SELECT FROM pg_extension WHERE extname = 'dblink') THEN
        IF gptsql.share_connection(1) = ANY (coalesce(dblink_get_connections(), '{}')) THEN
            PERFORM gptsql.settle_shares();
            PERFORM * FROM dblink(gptsql.share_connection(1), format('SELECT gptsql.forget_cache(%L, false)::text', runs))
                           AS t(done text);
        END IF;
    END IF;
    DELETE FROM gptsql.kv_cache WHERE run_id = ANY (runs);
    DELETE FROM gptsql.kv_chunk WHERE run_id = ANY (runs);
END
$$;

-- Close a run: its status, and the KV cache it no longer needs.
CREATE FUNCTION gptsql.finish_run(run bigint, status text DEFAULT 'done', error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE  gptsql.run
    SET     status = finish_run.status, error = finish_run.error, finished_at = clock_timestamp()
    WHERE   id = finish_run.run AND gptsql.run.status = 'running';
    PERFORM gptsql.forget_cache(ARRAY[run]);
END
$$;

-- The article's generation loop as one recursive query: each row of `generation` is one step,
-- which feeds the token chosen by the row before. Returns the generated text (without the prompt).
-- allow_special reads special tokens written in the prompt (<|im_start|>...) as those tokens.
CREATE FUNCTION gptsql.generate(prompt text, max_tokens int DEFAULT 10,
                                temperature float8 DEFAULT 0, top_k int DEFAULT 0,
                                top_p float8 DEFAULT 1, seed bigint DEFAULT NULL,
                                model text DEFAULT NULL, record boolean DEFAULT true,
                                allow_special boolean DEFAULT false, kind text DEFAULT 'generate')
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s         record;
    generated int[];
BEGIN
    SELECT * INTO s FROM gptsql.start_run(model, prompt, max_tokens, temperature, top_k, top_p, seed, record,
                                          kind => kind, allow_special => allow_special);
    BEGIN
        WITH RECURSIVE generation AS (
                SELECT  0 AS step, s.tokens AS context, s.tokens AS fresh, NULL::int AS token
                UNION ALL
                SELECT  g.step + 1, g.context || n.token, ARRAY[n.token], n.token
                FROM    generation g
                CROSS JOIN LATERAL gptsql.step(s.run_id, g.fresh, cardinality(g.context) - cardinality(g.fresh)) n
                WHERE   g.step < max_tokens AND g.token IS DISTINCT FROM s.eot
        )
        SELECT  array_agg(token ORDER BY step) FILTER (WHERE step > 0 AND token IS DISTINCT FROM s.eot)
        INTO    generated
        FROM    generation;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM gptsql.forget_cache(ARRAY[s.run_id]);     -- what the other backends wrote goes too
        RAISE;
    END;
    PERFORM gptsql.finish_run(s.run_id, 'done');
    RETURN gptsql.detokenize(coalesce(generated, '{}'), model);
END
$$;

-- A chat model's reply to a conversation: messages as a jsonb array of {"role", "content"} objects
-- (system, user, assistant), laid out in the model's chat format (gptsql.chat_prompt, from its
-- template) and generated until the model ends its turn. A recorded run of kind 'chat'.
CREATE FUNCTION gptsql.chat(messages jsonb, max_tokens int DEFAULT 256, temperature float8 DEFAULT 0,
                            top_k int DEFAULT 0, top_p float8 DEFAULT 1, seed bigint DEFAULT NULL,
                            model text DEFAULT NULL, record boolean DEFAULT true)
RETURNS text
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT  gptsql.generate(gptsql.chat_prompt(messages, model), max_tokens, temperature, top_k, top_p, seed,
                            model, record, allow_special => true, kind => 'chat');
END;

-- What a chat run is fed after a reply to go on with a new user message: the rest of the
-- assistant's suffix (after the stop token that ended the reply, when one did), the message in the
-- user's prefix and suffix, then the generation prompt: the text chat_prompt lays out there.
CREATE FUNCTION gptsql.chat_next(content text, model text DEFAULT NULL, ended_by_stop boolean DEFAULT true)
RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  CASE WHEN ended_by_stop AND starts_with(a.suffix, s.text) THEN substr(a.suffix, length(s.text) + 1)
                 ELSE a.suffix END
            || u.prefix || content || u.suffix || f.generation_prompt
    FROM    gptsql.chat_format f
    JOIN    gptsql.chat_role a ON a.model_id = f.model_id AND a.role = 'assistant'
    JOIN    gptsql.chat_role u ON u.model_id = f.model_id AND u.role = 'user'
    LEFT JOIN gptsql.tokenizer k ON k.model_id = f.model_id
    LEFT JOIN gptsql.special_token s ON s.model_id = f.model_id AND s.token = k.eos
    WHERE   f.model_id = gptsql.model_id(model);
END;

-- The end of a prediction: feed the prompt's last `tokens` (places start, ...; the places before
-- them are in the cache, fed by feed()), record the distribution of the token after them, finish
-- the run. The client that shows progress over a long prompt calls it after feeding the rest.
CREATE FUNCTION gptsql.predict_run(run bigint, tokens int[], start int, top_n int DEFAULT 10)
RETURNS TABLE (rank int, token int, piece text, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r      gptsql.run := gptsql.check_step(run, tokens, start);
    shares int := gptsql.shares(r.model_id);
    hidden vector;
BEGIN
    IF top_n IS NULL OR top_n < 1 THEN
        RAISE EXCEPTION 'top_n must be 1 or more, got %', top_n;
    END IF;
    PERFORM gptsql.record_fed(run, tokens, start);
    hidden := gptsql.forward(run, tokens, start, shares);
    INSERT INTO gptsql.step_logit (run_id, place, rank, token, logit, probability)
    SELECT  run, start + cardinality(tokens) - 1, d.rank, d.token, d.logit, d.probability
    FROM    gptsql.distribution(r.model_id, hidden, top_n, shares) d;
    PERFORM gptsql.finish_run(run, 'done');
    RETURN QUERY
        SELECT  l.rank, l.token, t.piece, l.probability, l.logit
        FROM    gptsql.step_logit l
        JOIN    gptsql.token t ON t.model_id = r.model_id AND t.token = l.token
        WHERE   l.run_id = predict_run.run
        ORDER BY l.rank;
END
$$;

-- The article's llm(prompt): the distribution of the token after the prompt.
CREATE FUNCTION gptsql.predict(prompt text, top_n int DEFAULT 10, model text DEFAULT NULL)
RETURNS TABLE (rank int, token int, piece text, probability float8, logit float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s      record;
BEGIN
    IF top_n IS NULL OR top_n < 1 THEN
        RAISE EXCEPTION 'top_n must be 1 or more, got %', top_n;
    END IF;
    SELECT * INTO s FROM gptsql.start_run(model, prompt, 0, kind => 'predict');
    BEGIN
        RETURN QUERY SELECT * FROM gptsql.predict_run(s.run_id, s.tokens, 0, top_n);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM gptsql.forget_cache(ARRAY[s.run_id]);     -- what the other backends wrote goes too
        RAISE;
    END;
END
$$;
