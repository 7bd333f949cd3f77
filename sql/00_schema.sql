-- 00_schema.sql — the tables every later stage reads and writes.
--
-- A model is a row of gptsql.model; its shapes (n_embd, n_head, n_layer, n_ctx, n_vocab) are read
-- from that row by every function, never written as literals. Weights are pgvector rows, one row
-- per output unit of a linear layer, stored inline (STORAGE PLAIN) so scans never detoast.
-- Tables are created once and kept when the engine's functions are upgraded (server/db.py drops
-- and makes every function, view and type again; sql/migrations.sql brings older tables up to date).

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS gptsql;

CREATE TABLE IF NOT EXISTS gptsql.meta (
    key   text PRIMARY KEY,
    value text
);

CREATE TABLE IF NOT EXISTS gptsql.model (
    id                 serial PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    source             text NOT NULL,
    n_vocab            int NOT NULL,
    n_ctx              int NOT NULL,
    n_embd             int NOT NULL,
    n_head             int NOT NULL,
    n_layer            int NOT NULL,
    layer_norm_epsilon float8 NOT NULL DEFAULT 1e-5,
    dtype              text NOT NULL DEFAULT 'float32' CHECK (dtype IN ('float32', 'float16')),
    family             text NOT NULL DEFAULT 'gpt2' CHECK (family IN ('gpt2', 'llama')),
    n_kv_head          int NOT NULL,               -- key/value heads: n_head (the default), or fewer shared by groups of queries
    n_inner            int NOT NULL,               -- the MLP's hidden units (default 4 n_embd, GPT-2's)
    mlp_groups         int NOT NULL DEFAULT 4,     -- the MLP's hidden units stored as this many groups (05_mlp.sql)
    rope_theta         float8,                     -- llama: the base of the rotary embeddings' angles
    tied               boolean NOT NULL DEFAULT true,   -- the output layer is wte (else gptsql.lm_head)
    n_params           bigint,
    loaded_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE gptsql.model IS 'One row per loaded model; its shapes drive every query of the engine.';

-- A model row made by hand (or by an older loader) gets GPT-2's shapes where it names none.
CREATE FUNCTION gptsql.model_defaults()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.n_kv_head := coalesce(NEW.n_kv_head, NEW.n_head);
    NEW.n_inner := coalesce(NEW.n_inner, 4 * NEW.n_embd);
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER model_defaults BEFORE INSERT ON gptsql.model
    FOR EACH ROW EXECUTE FUNCTION gptsql.model_defaults();

-- The byte-level BPE vocabulary: each token is a byte string; merges are ranked pairs of tokens.
CREATE TABLE IF NOT EXISTS gptsql.token (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    token    int NOT NULL,
    bytes    bytea NOT NULL,
    piece    text NOT NULL,          -- the bytes as text (U+FFFD where a token ends mid-character)
    PRIMARY KEY (model_id, token)
);
CREATE INDEX IF NOT EXISTS token_bytes ON gptsql.token (model_id, bytes);

CREATE TABLE IF NOT EXISTS gptsql.merge (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    first    int NOT NULL,           -- left token of the pair
    second   int NOT NULL,           -- right token of the pair
    rank     int NOT NULL,           -- its place in the model's merge list: lower merges first
    token    int NOT NULL,           -- the token the pair becomes
    PRIMARY KEY (model_id, first, second)
);

-- How a model's text is cut into pieces before BPE ('gpt2': GPT-2's split; 'smollm': every digit
-- alone, then GPT-2's split), and the tokens that begin and end a text. Every model loaded has a
-- row; one without (made by hand) is read as GPT-2's kind with no special token.
CREATE TABLE IF NOT EXISTS gptsql.tokenizer (
    model_id      int PRIMARY KEY REFERENCES gptsql.model ON DELETE CASCADE,
    pre_tokenizer text NOT NULL CHECK (pre_tokenizer IN ('gpt2', 'smollm')),
    bos           int,               -- the token a text begins with (NULL: the model has none)
    eos           int,               -- the token that ends a text
    add_bos       boolean NOT NULL DEFAULT false   -- a prompt starts with bos
);

-- Special tokens (<|endoftext|>, <|im_start|>, <|im_end|>, ...): read as that one token where a
-- text holds them, when the caller allows it; otherwise they are ordinary text.
CREATE TABLE IF NOT EXISTS gptsql.special_token (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    token    int NOT NULL,
    text     text NOT NULL,
    PRIMARY KEY (model_id, token),
    UNIQUE (model_id, text)
);

-- Models loaded before these tables: GPT-2's split, and <|endoftext|> special, begin and end. (A
-- migration that needs the tables above, so here rather than in migrations.sql, which runs first.)
INSERT INTO gptsql.tokenizer (model_id, pre_tokenizer, bos, eos)
SELECT  m.id, 'gpt2', t.token, t.token
FROM    gptsql.model m
LEFT JOIN gptsql.token t ON t.model_id = m.id AND t.bytes = '<|endoftext|>'::bytea
WHERE   NOT EXISTS (SELECT FROM gptsql.tokenizer k WHERE k.model_id = m.id)
ON CONFLICT DO NOTHING;
INSERT INTO gptsql.special_token (model_id, token, text)
SELECT  k.model_id, k.eos, '<|endoftext|>'
FROM    gptsql.tokenizer k
WHERE   k.pre_tokenizer = 'gpt2' AND k.eos IS NOT NULL
AND     NOT EXISTS (SELECT FROM gptsql.special_token s WHERE s.model_id = k.model_id)
ON CONFLICT DO NOTHING;

-- A chat model's prompt format, taken from its chat template at load time (loader/chat.py) so that
-- gptsql.chat_prompt builds prompts without jinja: begin_text, then per message its role's prefix,
-- the content and its role's suffix, then generation_prompt. When the first message is not a
-- system message, default_system (if any) goes first as one. stop_tokens end the reply.
CREATE TABLE IF NOT EXISTS gptsql.chat_format (
    model_id          int PRIMARY KEY REFERENCES gptsql.model ON DELETE CASCADE,
    begin_text        text NOT NULL,
    generation_prompt text NOT NULL,
    default_system    text,
    stop_tokens       int[] NOT NULL,
    template          text NOT NULL     -- the jinja template the pieces were taken from
);
CREATE TABLE IF NOT EXISTS gptsql.chat_role (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    role     text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    prefix   text NOT NULL,
    suffix   text NOT NULL,
    PRIMARY KEY (model_id, role)
);

-- Unicode general categories used by GPT-2's pre-tokenizer (\p{L}, \p{N}, \s), as code point
-- ranges derived from the `regex` package when a model is loaded.
CREATE TABLE IF NOT EXISTS gptsql.unicode_class (
    class text NOT NULL CHECK (class IN ('L', 'N', 'S')),
    lo    int NOT NULL,
    hi    int NOT NULL,
    PRIMARY KEY (class, lo)
);

-- Token and position embeddings. The big tables (wte, lm_head, linear) are partitioned by model: a
-- scan of the vocabulary reads only its own model's rows, and replacing a model drops a partition.
-- The output layer is wte itself (tied, GPT-2's and SmolLM2's) or, untied, lm_head's rows.
CREATE TABLE IF NOT EXISTS gptsql.wte (
    model_id int NOT NULL,           -- no foreign key: see new_partitions()
    token    int NOT NULL,
    w        vector,                 -- float32 models
    h        halfvec,                -- float16 models
    PRIMARY KEY (model_id, token)
) PARTITION BY LIST (model_id);
CREATE TABLE IF NOT EXISTS gptsql.lm_head (
    model_id int NOT NULL,           -- no foreign key: see new_partitions()
    token    int NOT NULL,
    w        vector,
    h        halfvec,
    PRIMARY KEY (model_id, token)
) PARTITION BY LIST (model_id);
-- Position embeddings (GPT-2; the Llama family turns q and k by their place instead: gptsql.rope).
CREATE TABLE IF NOT EXISTS gptsql.wpe (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    place    int NOT NULL,
    w        vector NOT NULL,
    PRIMARY KEY (model_id, place)
);

-- Norms: ln_1 and ln_2 of each block, ln_f after the last (block = n_layer). GPT-2's are layer
-- norms (gamma, beta); the Llama family's are RMS norms (gamma only, beta NULL).
CREATE TABLE IF NOT EXISTS gptsql.norm (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    name     text NOT NULL CHECK (name IN ('ln_1', 'ln_2', 'ln_f')),
    block    int NOT NULL,
    gamma    vector NOT NULL,
    beta     vector,
    PRIMARY KEY (model_id, name, block)
);

-- Rotary position embeddings (the Llama family): per place the cosines of its head_dim angles and
-- their sines, the first half negated, so that q turned to its place is q * cos + swap(q) * sin
-- (swap: the two halves of q exchanged), as HF's rotate_half. Made from rope_theta at load time.
CREATE TABLE IF NOT EXISTS gptsql.rope (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    place    int NOT NULL,
    cos      vector NOT NULL,
    sin      vector NOT NULL,
    PRIMARY KEY (model_id, place)
);

-- Linear layers y = x W + b, one row per output unit (a column of W): c_attn (q, k, v), attn_proj,
-- c_fc (the MLP's up projection; in the Llama family SwiGLU's gate, its row carrying the unit's up
-- row beside it, so that one tuple gives both products) and mlp_proj (down). The MLP's hidden units
-- are cut into mlp_groups groups: c_fc's units come back as one vector per group, and mlp_proj's
-- rows read them as parts of the same width, so every row stays inline. c_attn's units come back as
-- one vector per head of q, then k, then v. The Llama family has no biases (0).
CREATE TABLE IF NOT EXISTS gptsql.linear (
    model_id int NOT NULL,           -- no foreign key: see new_partitions()
    name     text NOT NULL,
    block    int NOT NULL,
    part     int NOT NULL,           -- which slice of the input this row reads (mlp_proj: a group)
    grp      int NOT NULL,           -- which output vector the unit belongs to
    idx      int NOT NULL,           -- position of the unit inside that vector
    w        vector,                 -- float32 models
    h        halfvec,                -- float16 models
    bias     real NOT NULL,          -- counted once, on part 0
    up_w     vector,                 -- SwiGLU's up row of a c_fc unit (float32 models)
    up_h     halfvec,                -- the same, float16 models
    PRIMARY KEY (model_id, name, block, part, grp, idx)
) PARTITION BY LIST (model_id);

-- float16 models keep the big matrices as halfvec in column h (w stays NULL): half the bytes,
-- and pgvector's halfvec inner product is faster. Weights stay inline (PLAIN): no detoasting.
ALTER TABLE gptsql.wte    ALTER COLUMN w SET STORAGE PLAIN, ALTER COLUMN h SET STORAGE PLAIN;
ALTER TABLE gptsql.lm_head ALTER COLUMN w SET STORAGE PLAIN, ALTER COLUMN h SET STORAGE PLAIN;
ALTER TABLE gptsql.wpe    ALTER COLUMN w SET STORAGE PLAIN;
ALTER TABLE gptsql.linear ALTER COLUMN w SET STORAGE PLAIN, ALTER COLUMN h SET STORAGE PLAIN,
                          ALTER COLUMN up_w SET STORAGE PLAIN, ALTER COLUMN up_h SET STORAGE PLAIN;

-- The attention projection's rows cut to the columns of the query heads of key/value heads
-- [head_lo, head_hi): what a share of the attention multiplies (04_attention.sql) instead of every
-- whole row with a subvector. Made from gptsql.linear when shares first use that split of a model
-- (derived, so unlogged: a crash empties it and the next use makes it again); removed with the model.
CREATE UNLOGGED TABLE IF NOT EXISTS gptsql.projection_share (
    model_id int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    head_lo  int NOT NULL,
    head_hi  int NOT NULL,
    block    int NOT NULL,
    grp      int NOT NULL,
    idx      int NOT NULL,
    w        vector,
    h        halfvec,
    bias     real NOT NULL,
    PRIMARY KEY (model_id, head_lo, head_hi, block, grp, idx)
);
ALTER TABLE gptsql.projection_share ALTER COLUMN w SET STORAGE PLAIN, ALTER COLUMN h SET STORAGE PLAIN;

-- A model's own partitions of the big tables. Creating a partition, or dropping one, takes an
-- ACCESS EXCLUSIVE lock on the parent, and every query of every model waits for it until the
-- load commits. So a load builds its partitions as plain tables, fills them (COPY FREEZE: they
-- are new in its transaction) and attaches them at the end: ATTACH takes SHARE UPDATE EXCLUSIVE
-- on the parent, which readers do not wait for, and the CHECK matching the bound spares it the
-- validation scan. The big tables have no foreign key to gptsql.model: attaching would check one
-- row by row, and dropping one locks gptsql.model; a model's partitions go with it, by name.
CREATE FUNCTION gptsql.new_partitions(model int)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['wte', 'lm_head', 'linear'] LOOP
        EXECUTE format('CREATE TABLE gptsql.%I (LIKE gptsql.%I INCLUDING ALL, CONSTRAINT %I CHECK (model_id = %s))',
                       t || '_' || model, t, t || '_' || model || '_bound', model);
    END LOOP;
END
$$;

CREATE FUNCTION gptsql.attach_partitions(model int)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['wte', 'lm_head', 'linear'] LOOP
        EXECUTE format('ALTER TABLE gptsql.%I ATTACH PARTITION gptsql.%I FOR VALUES IN (%s)', t, t || '_' || model, model);
    END LOOP;
END
$$;

-- Both at once, for a model made by hand (a few rows, nobody reading).
CREATE FUNCTION gptsql.create_partitions(model int)
RETURNS void
LANGUAGE sql AS $$
    SELECT gptsql.new_partitions(model);
    SELECT gptsql.attach_partitions(model);
$$;

-- Remove a model: its row, and by cascade its vocabulary, small weights and runs. Its two big
-- tables are left over until leftover_statements() runs (gptsql unload and gptsql load do):
-- dropping them here would lock out every generation until this transaction ends.
-- A model that is generating is not removed: its running runs' steps write rows the cascade deletes
-- (a deadlock, or the run gone without a word). The model's row is locked first, so no run starts
-- on it meanwhile (start_run's insert waits for this transaction).
CREATE FUNCTION gptsql.drop_model(model_name text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    found_id int;
    running  bigint[];
BEGIN
    SELECT m.id INTO found_id FROM gptsql.model m WHERE m.name = model_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT array_agg(r.id ORDER BY r.id) INTO running
    FROM   gptsql.run r
    WHERE  r.model_id = found_id AND r.status = 'running'
    AND    r.backend_pid IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL);
    IF running IS NOT NULL THEN
        RAISE EXCEPTION 'model "%" is generating (running run %): it is not removed while a run uses it',
            model_name, array_to_string(running, ', ')
            USING HINT = 'stop the run (Ctrl-C) or let it finish, then try again; from psql, '
                         'gptsql.finish_run(run, ''interrupted'') ends a run left open';
    END IF;
    DELETE FROM gptsql.model m WHERE m.id = found_id;
    RETURN true;
END
$$;

-- The statements that remove the big tables of models no longer in gptsql.model, each to run on
-- its own outside a transaction block (from psql: SELECT * FROM gptsql.leftover_statements() \gexec).
-- DETACH ... CONCURRENTLY waits for the queries that use the parent but blocks none of them;
-- FINALIZE completes one that was interrupted; the detached table then drops with no lock on
-- anything else.
CREATE FUNCTION gptsql.leftover_statements()
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH leftover AS (
            SELECT  c.oid, c.relname, substring(c.relname FROM '^(wte|lm_head|linear)_') AS parent,
                    i.inhdetachpending AS pending, i.inhrelid IS NOT NULL AS attached
            FROM    pg_class c
            JOIN    pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'gptsql'
            LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
            WHERE   c.relkind = 'r'
            AND     c.relname ~ '^(wte|lm_head|linear)_[0-9]+$'
            AND     NOT EXISTS (SELECT FROM gptsql.model m WHERE m.id = substring(c.relname FROM '[0-9]+$')::int)
    ),
    statement AS (
            SELECT  relname, 1 AS step,
                    format('ALTER TABLE gptsql.%I DETACH PARTITION gptsql.%I %s', parent, relname,
                           CASE WHEN pending THEN 'FINALIZE' ELSE 'CONCURRENTLY' END) AS sql
            FROM    leftover
            WHERE   attached
        UNION ALL
            SELECT  relname, 2, format('DROP TABLE gptsql.%I', relname)
            FROM    leftover
    )
    SELECT sql FROM statement ORDER BY relname, step
$$;

-- Runs: every generation and prediction is recorded (see 08_runs.sql for the views).
CREATE TABLE IF NOT EXISTS gptsql.run (
    id           bigserial PRIMARY KEY,
    model_id     int NOT NULL REFERENCES gptsql.model ON DELETE CASCADE,
    kind         text NOT NULL DEFAULT 'generate' CHECK (kind IN ('generate', 'predict', 'chat', 'score')),
    prompt       text NOT NULL,
    max_tokens   int NOT NULL DEFAULT 0,
    temperature  float8 NOT NULL DEFAULT 0,
    top_k        int NOT NULL DEFAULT 0,
    top_p        float8 NOT NULL DEFAULT 1,
    seed         bigint,
    record       boolean NOT NULL DEFAULT true,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    error        text,
    backend_pid  int DEFAULT pg_backend_pid(),
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    prefill_ms   float8,
    decode_ms    float8
);
CREATE TABLE IF NOT EXISTS gptsql.run_token (
    run_id      bigint NOT NULL REFERENCES gptsql.run ON DELETE CASCADE,
    place       int NOT NULL,
    token       int NOT NULL,
    is_prompt   boolean NOT NULL,
    probability float8,              -- the model's probability of this token when it was chosen
    logit       float8,
    elapsed_ms  float8,
    PRIMARY KEY (run_id, place)
);

-- The KV cache: keys and values of every computed place, per block and head. Unlogged: it is
-- scratch that a crash may lose, and writing it must cost as little as possible.
CREATE UNLOGGED TABLE IF NOT EXISTS gptsql.kv_cache (
    run_id bigint NOT NULL,
    block  int NOT NULL,
    head   int NOT NULL,
    place  int NOT NULL,
    q      vector,                   -- a step writes its places' q, k and v first, then attends
    k      vector NOT NULL,
    v      vector NOT NULL,
    PRIMARY KEY (run_id, block, head, place)
);

-- The same keys and values again, a chunk of C = chunk_places(head_dim) places to a row, for the
-- long contexts: k holds the chunk's keys side by side (k_0 || k_1 || ...), v its values
-- dimension-major (element i * C + j is element i of value j), so that one pgvector product mixes a
-- whole chunk's values (sql/04_attention.sql). Made from kv_cache rows once a chunk is complete;
-- k and v of a row stay under a page (C * head_dim <= 1000), inline.
CREATE UNLOGGED TABLE IF NOT EXISTS gptsql.kv_chunk (
    run_id bigint NOT NULL,
    block  int NOT NULL,
    head   int NOT NULL,
    chunk  int NOT NULL,             -- places chunk * C .. chunk * C + C - 1
    k      vector NOT NULL,
    v      vector NOT NULL,
    PRIMARY KEY (run_id, block, head, chunk)
);
ALTER TABLE gptsql.kv_chunk ALTER COLUMN k SET STORAGE PLAIN, ALTER COLUMN v SET STORAGE PLAIN;

-- Activations kept for exploring a run (when run.record): residual stream, attention, top logits.
CREATE TABLE IF NOT EXISTS gptsql.residual (
    run_id          bigint NOT NULL REFERENCES gptsql.run ON DELETE CASCADE,
    block           int NOT NULL,
    place           int NOT NULL,
    after_attention vector NOT NULL,
    after_mlp       vector NOT NULL,
    PRIMARY KEY (run_id, block, place)
);
CREATE TABLE IF NOT EXISTS gptsql.attention_row (
    run_id  bigint NOT NULL REFERENCES gptsql.run ON DELETE CASCADE,
    block   int NOT NULL,
    head    int NOT NULL,
    place   int NOT NULL,
    weights float8[] NOT NULL,       -- weights[k + 1]: attention of `place` to key place k
    PRIMARY KEY (run_id, block, head, place)
);
CREATE TABLE IF NOT EXISTS gptsql.step_logit (
    run_id      bigint NOT NULL REFERENCES gptsql.run ON DELETE CASCADE,
    place       int NOT NULL,        -- the place whose next token these logits predict
    rank        int NOT NULL,
    token       int NOT NULL,
    logit       float8 NOT NULL,
    probability float8 NOT NULL,
    PRIMARY KEY (run_id, place, rank)
);

-- Which model a function works on: by name, or the most recently loaded one when NULL.
CREATE FUNCTION gptsql.model_id(model text DEFAULT NULL) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found int;
BEGIN
    IF model IS NULL THEN
        SELECT m.id INTO found FROM gptsql.model m ORDER BY m.loaded_at DESC, m.id DESC LIMIT 1;
        IF found IS NULL THEN
            RAISE EXCEPTION 'no model is loaded'
                USING HINT = 'load one: gptsql load gpt2 (Hugging Face hub) or gptsql load random:tiny (offline)';
        END IF;
    ELSE
        SELECT m.id INTO found FROM gptsql.model m WHERE m.name = model_id.model;
        IF found IS NULL THEN
            RAISE EXCEPTION 'unknown model "%"; loaded models: %', model,
                coalesce((SELECT string_agg(name, ', ' ORDER BY name) FROM gptsql.model), 'none')
                USING HINT = 'list them with: gptsql models';
        END IF;
    END IF;
    RETURN found;
END
$$;
