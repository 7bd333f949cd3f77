-- migrations.sql — tables made by earlier versions of gptsql, brought to this version's shape.
--
-- Run by the installer (server/db.py) before 00_schema.sql, which creates what is missing; every
-- step here checks what it changes, so it runs on a database of any earlier version, or none.

DO $$
DECLARE
    fk    record;
    llama record;
BEGIN
    IF to_regclass('gptsql.model') IS NULL THEN
        RETURN;                         -- a new database: 00_schema.sql makes everything
    END IF;

    -- The big tables lost their foreign key to gptsql.model (see new_partitions() in 00_schema.sql).
    FOR fk IN SELECT c.conrelid::regclass AS tab, c.conname
              FROM   pg_constraint c
              WHERE  c.contype = 'f' AND c.conparentid = 0
              AND    c.conrelid IN ('gptsql.wte'::regclass, 'gptsql.linear'::regclass) LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tab, fk.conname);
    END LOOP;

    -- Seeds are integers (bigint): a float8 seed made seeds above 2^53 collide. A seed with a
    -- fraction is rounded (whole ones keep their texts: their text form, which uniform() hashes,
    -- is the same).
    IF (SELECT atttypid = 'float8'::regtype FROM pg_attribute
        WHERE attrelid = 'gptsql.run'::regclass AND attname = 'seed') THEN
        ALTER TABLE gptsql.run ALTER COLUMN seed TYPE bigint
            USING CASE WHEN abs(seed) < 9.2e18 THEN round(seed)::bigint END;
    END IF;

    -- The shapes the Llama family added: a GPT-2 model has them from its own.
    ALTER TABLE gptsql.model ADD COLUMN IF NOT EXISTS mlp_groups int NOT NULL DEFAULT 4,
                             ADD COLUMN IF NOT EXISTS family text NOT NULL DEFAULT 'gpt2' CHECK (family IN ('gpt2', 'llama')),
                             ADD COLUMN IF NOT EXISTS n_kv_head int,
                             ADD COLUMN IF NOT EXISTS n_inner int,
                             ADD COLUMN IF NOT EXISTS rope_theta float8,
                             ADD COLUMN IF NOT EXISTS tied boolean NOT NULL DEFAULT true;
    UPDATE gptsql.model SET n_kv_head = coalesce(n_kv_head, n_head), n_inner = coalesce(n_inner, 4 * n_embd)
    WHERE  n_kv_head IS NULL OR n_inner IS NULL;
    ALTER TABLE gptsql.model ALTER COLUMN n_kv_head SET NOT NULL, ALTER COLUMN n_inner SET NOT NULL;
    ALTER TABLE gptsql.norm ALTER COLUMN beta DROP NOT NULL;                  -- RMS norms have none
    ALTER TABLE gptsql.linear DROP CONSTRAINT IF EXISTS linear_name_check;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'run_kind_check'
                   AND pg_get_constraintdef(oid) LIKE '%score%') THEN         -- chat and score runs came
        ALTER TABLE gptsql.run DROP CONSTRAINT IF EXISTS run_kind_check;
        ALTER TABLE gptsql.run ADD CONSTRAINT run_kind_check
            CHECK (kind IN ('generate', 'predict', 'chat', 'score'));
    END IF;
    -- SwiGLU's up rows (c_up) moved beside their gate rows (c_fc): one tuple gives both products.
    ALTER TABLE gptsql.linear ADD COLUMN IF NOT EXISTS up_w vector, ADD COLUMN IF NOT EXISTS up_h halfvec;
    ALTER TABLE gptsql.linear ALTER COLUMN up_w SET STORAGE PLAIN, ALTER COLUMN up_h SET STORAGE PLAIN;
    FOR llama IN SELECT m.id FROM gptsql.model m
                 WHERE  m.family = 'llama' AND EXISTS (SELECT FROM gptsql.linear l WHERE l.model_id = m.id AND l.name = 'c_up') LOOP
        UPDATE gptsql.linear f SET up_w = u.w, up_h = u.h
        FROM   gptsql.linear u
        WHERE  f.model_id = llama.id AND f.name = 'c_fc' AND u.model_id = llama.id AND u.name = 'c_up'
        AND    u.block = f.block AND u.part = f.part AND u.grp = f.grp AND u.idx = f.idx;
        DELETE FROM gptsql.linear WHERE model_id = llama.id AND name = 'c_up';
    END LOOP;
    IF to_regclass('gptsql.kv_cache') IS NOT NULL THEN
        ALTER TABLE gptsql.kv_cache ADD COLUMN IF NOT EXISTS q vector;
    END IF;
END
$$;
