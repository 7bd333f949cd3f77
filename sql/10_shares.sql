-- 10_shares.sql — one statement over several backends: the session's shares.
--
-- A model's work splits into shares (tensor parallelism): share s of N owns key/value heads [lo, hi) of every
-- block's attention, MLP unit groups [lo, hi), and a range of the token embeddings' pages
-- (04_attention.sql, 05_mlp.sql, 07_logits.sql). The backend that runs the statement computes share
-- 0; shares 1 .. N - 1 run at the same time on other backends of the same server, reached through
-- dblink connections that this session keeps open. Their inputs go out as the text of the call and
-- their partial outputs come back as text: a vector's text is exact (the shortest decimal that reads
-- back as the same float). The other backends write only the KV cache (their own heads' rows) and
-- read only what was committed before (the model); what a run records is written here.
--
-- N comes from the setting gptsql.shares (SET gptsql.shares = 2), else from gptsql.meta's
-- 'default_shares' (the installer writes the machine's cores), clamped to what the model can split.
-- Where other backends cannot be had (no dblink, no right to connect, the server's connections
-- half used), the statement runs on one backend and says so once per session (a NOTICE).

CREATE FUNCTION gptsql.share_connection(share int)
RETURNS text
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT 'gptsql_share_' || share;
END;

-- The number of shares the session asks for.
CREATE FUNCTION gptsql.wanted_shares()
RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    raw text := coalesce(nullif(current_setting('gptsql.shares', true), ''),
                         (SELECT value FROM gptsql.meta WHERE key = 'default_shares'), '1');
BEGIN
    IF raw !~ '^\s*[0-9]{1,4}\s*$' OR raw::int < 1 THEN
        RAISE EXCEPTION 'gptsql.shares must be a whole number of backends, 1 or more; got %', quote_literal(raw)
            USING HINT = 'SET gptsql.shares = 2 (1: this backend alone)';
    END IF;
    RETURN raw::int;
END
$$;

-- Tell once per session why a statement runs on one backend.
CREATE FUNCTION gptsql.one_backend(reason text)
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('gptsql.one_backend_said', true) IS DISTINCT FROM reason THEN
        RAISE NOTICE 'gptsql runs on one backend: %', reason
            USING HINT = 'SET gptsql.shares = 1 to run on one backend without this notice';
        PERFORM set_config('gptsql.one_backend_said', reason, false);
    END IF;
    RETURN 1;
END
$$;

-- Open share connection `share` to this server: NULL, or why it could not be opened. The server's
-- own socket first (a superuser needs no password there), else gptsql.share_dsn (the client's DSN,
-- with its password: PostgreSQL asks non-superusers for one).
CREATE FUNCTION gptsql.connect_share(share int)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    why     text;
    targets text[];
    target  text;
BEGIN
    BEGIN                               -- only roles that may read the server's settings find its socket
        targets := ARRAY[format('host=%s port=%s dbname=%s user=%s',
                                coalesce(nullif(split_part(current_setting('unix_socket_directories'), ',', 1), ''),
                                         'localhost'),
                                current_setting('port'), quote_ident(current_database()), quote_ident(current_user))];
    EXCEPTION WHEN insufficient_privilege THEN
        targets := '{}';
        why := 'this role may not read the server''s socket directory';
    END;
    targets := targets || nullif(current_setting('gptsql.share_dsn', true), '');
    FOREACH target IN ARRAY array_remove(targets, NULL) LOOP
        BEGIN
            PERFORM dblink_connect(gptsql.share_connection(share),
                                   target || format(' application_name=%L', 'gptsql share ' || share));
            -- A share never waits long for a lock: a wait on this session's own transaction would
            -- never end (this backend waits for the share's answer), so it fails in one line instead.
            PERFORM dblink_exec(gptsql.share_connection(share), 'SET lock_timeout = ''60s''');
            RETURN NULL;
        EXCEPTION WHEN OTHERS THEN
            why := split_part(SQLERRM, E'\n', 1);
        END;
    END LOOP;
    RETURN format('another backend refused the connection (%s)', why);
END
$$;

-- How many shares this session runs model `model` on, their connections opened on first use (and
-- the model's projection split made, committed on one of them, so that every share reads it).
CREATE FUNCTION gptsql.shares(model int)
RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m       gptsql.model;
    wanted  int := gptsql.wanted_shares();
    open    text[];
    missing int;
    why     text;
    heads   record;
BEGIN
    SELECT * INTO m FROM gptsql.model mm WHERE mm.id = shares.model;
    wanted := least(wanted, m.n_kv_head, m.mlp_groups);
    IF wanted <= 1 THEN
        RETURN 1;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'dblink') THEN
        RETURN gptsql.one_backend('the dblink extension is not installed in this database');
    END IF;
    open := coalesce(dblink_get_connections(), '{}');
    SELECT count(*) INTO missing
    FROM   generate_series(1, wanted - 1) AS s
    WHERE  NOT gptsql.share_connection(s) = ANY (open);
    -- Other backends take at most half the server's connections: the rest is for commands.
    IF missing > 0 AND (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') + missing
                       > current_setting('max_connections')::int / 2 THEN
        RETURN gptsql.one_backend('the server''s connections are half used');
    END IF;
    FOR s IN 1 .. wanted - 1 LOOP
        CONTINUE WHEN gptsql.share_connection(s) = ANY (open);
        why := gptsql.connect_share(s);
        IF why IS NOT NULL THEN
            RETURN gptsql.one_backend(why);
        END IF;
    END LOOP;
    FOR s IN 0 .. wanted - 1 LOOP
        SELECT * INTO heads FROM gptsql.share_of(m.n_kv_head, s, wanted);
        IF NOT EXISTS (SELECT FROM gptsql.projection_share p
                       WHERE p.model_id = model AND p.head_lo = heads.lo AND p.head_hi = heads.hi) THEN
            PERFORM * FROM dblink(gptsql.share_connection(1),
                                  format('SELECT gptsql.prepare_projection_share(%s, %s, %s)::text',
                                         model, heads.lo, heads.hi)) AS t(done text);
        END IF;
    END LOOP;
    RETURN wanted;
END
$$;

-- Wait until share connection `name` runs nothing and has nothing left to read (a statement that
-- failed may have left a share running or answered): cancelled, then its answer read and dropped.
CREATE FUNCTION gptsql.settle_share(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning AS $$
BEGIN
    IF dblink_is_busy(name) = 1 THEN
        PERFORM dblink_cancel_query(name);
    END IF;
    PERFORM * FROM dblink_get_result(name, false) AS t(answer text);
    PERFORM * FROM dblink_get_result(name, false) AS t(answer text);
END
$$;

-- Every share connection of the session settled: nothing of an interrupted statement still writes.
CREATE FUNCTION gptsql.settle_shares()
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'dblink') THEN
        PERFORM gptsql.settle_share(c)
        FROM    unnest(dblink_get_connections()) AS c
        WHERE   c LIKE 'gptsql\_share\_%';
    END IF;
END
$$;

-- Start `call` on shares 1 .. shares - 1: its %s is the share's number.
CREATE FUNCTION gptsql.send_shares(shares int, call text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning AS $$
DECLARE
    why text;
BEGIN
    FOR s IN 1 .. shares - 1 LOOP
        IF NOT gptsql.share_connection(s) = ANY (coalesce(dblink_get_connections(), '{}')) THEN
            why := gptsql.connect_share(s);
            IF why IS NOT NULL THEN
                RAISE EXCEPTION 'share % of % has no backend: %', s, shares, why
                    USING HINT = 'run it on one backend: SET gptsql.shares = 1';
            END IF;
        END IF;
        IF dblink_send_query(gptsql.share_connection(s), format(call, s)) <> 1 THEN
            PERFORM gptsql.settle_share(gptsql.share_connection(s));
            IF dblink_send_query(gptsql.share_connection(s), format(call, s)) <> 1 THEN
                RAISE EXCEPTION 'share % of % did not take its statement: %', s, shares,
                    dblink_error_message(gptsql.share_connection(s))
                    USING HINT = 'run it on one backend: SET gptsql.shares = 1';
            END IF;
        END IF;
    END LOOP;
END
$$;

-- The answers of shares 1 .. shares - 1 to a block's half, added to this share's.
CREATE FUNCTION gptsql.gather_shares(shares int, INOUT partial vector[], INOUT recorded gptsql.attention_row[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    part gptsql.share_part;
BEGIN
    FOR s IN 1 .. shares - 1 LOOP
        part := (SELECT t.answer FROM dblink_get_result(gptsql.share_connection(s)) AS t(answer gptsql.share_part));
        PERFORM * FROM dblink_get_result(gptsql.share_connection(s)) AS t(answer text);
        partial := gptsql.add_all(partial, part.partial);
        recorded := recorded || part.recorded;
    END LOOP;
END
$$;

-- The answers of shares 1 .. shares - 1 for the vocabulary.
CREATE FUNCTION gptsql.gather_answers(shares int)
RETURNS gptsql.vocab_answer[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    answers gptsql.vocab_answer[] := '{}';
    one     gptsql.vocab_answer;
BEGIN
    FOR s IN 1 .. shares - 1 LOOP
        one := (SELECT t.answer FROM dblink_get_result(gptsql.share_connection(s)) AS t(answer gptsql.vocab_answer));
        PERFORM * FROM dblink_get_result(gptsql.share_connection(s)) AS t(answer text);
        answers := answers || one;
    END LOOP;
    RETURN answers;
END
$$;
