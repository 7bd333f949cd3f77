-- 06_blocks.sql — a transformer block, and the blocks stacked by a recursive CTE.
--
--   a = h + attention(layer_norm(h, ln_1))
--   h' = a + mlp(layer_norm(a, ln_2))
--
-- Each half is the sum of its shares' partial outputs (04_attention.sql, 05_mlp.sql): this backend
-- computes share 0 while the session's other backends compute the rest (10_shares.sql); with one
-- share, the whole half here. forward() runs a batch of new places through every block (keys and
-- values of earlier places come from the KV cache) and returns each place's hidden state after the
-- final layer norm.

-- One block for a batch of places (place n is places[n] of runs[n]; records[n]: keep its
-- activations). The residual stream after each half and the attention weights are recorded here,
-- by the backend that runs the statement, so that a generation started in an open transaction
-- (select gptsql.generate(...) in psql) keeps them with its run.
CREATE FUNCTION gptsql.block(model int, block int, runs bigint[], places int[], records boolean[],
                             h vector[], shares int)
RETURNS vector[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    x         vector[] := gptsql.norm_all(model, 'ln_1', block, h);
    a         vector[];
    part      gptsql.share_part;
BEGIN
    IF shares > 1 THEN                  -- the other shares start first, this one meanwhile
        PERFORM gptsql.send_shares(shares, format(
            'SELECT gptsql.attention_share(%s, %s, %L, %L, %L, %L, %%s, %s)', model, block, runs, places, records, x, shares));
    END IF;
    part := gptsql.attention_share(model, block, runs, places, records, x, 0, shares);
    IF shares > 1 THEN
        SELECT * INTO part FROM gptsql.gather_shares(shares, part.partial, part.recorded);
    END IF;
    IF part.recorded IS NOT NULL THEN
        INSERT INTO gptsql.attention_row SELECT * FROM unnest(part.recorded);
    END IF;
    a := gptsql.add_all(h, part.partial);

    x := gptsql.norm_all(model, 'ln_2', block, a);
    IF shares > 1 THEN
        PERFORM gptsql.send_shares(shares, format(
            'SELECT ROW(gptsql.mlp_share(%s, %s, %L, %%s, %s), NULL)::gptsql.share_part', model, block, x, shares));
    END IF;
    part := ROW(gptsql.mlp_share(model, block, x, 0, shares), NULL);
    IF shares > 1 THEN
        SELECT * INTO part FROM gptsql.gather_shares(shares, part.partial, NULL);
    END IF;
    h := gptsql.add_all(a, part.partial);

    IF true = ANY (records) THEN
        INSERT INTO gptsql.residual (run_id, block, place, after_attention, after_mlp)
        SELECT  runs[n], block, places[n], a[n], h[n]
        FROM    generate_subscripts(places, 1) AS n
        WHERE   records[n];
    END IF;
    RETURN h;
END
$$;

-- A batch of new places (tokens[n] at places[n] of runs[n]) through every block: each place's
-- hidden state after ln_f, the final layer norm (stored as block n_layer).
CREATE FUNCTION gptsql.forward(model int, runs bigint[], places int[], tokens int[], records boolean[], shares int)
RETURNS vector[]
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH RECURSIVE config AS (
            SELECT  m.n_layer
            FROM    gptsql.model m
            WHERE   m.id = model
    ), blocks AS (
            SELECT  0 AS block, gptsql.embeddings(model, tokens, places) AS h
            UNION ALL
            SELECT  blocks.block + 1, gptsql.block(model, blocks.block, runs, places, records, blocks.h, shares)
            FROM    blocks, config
            WHERE   blocks.block < config.n_layer
    )
    SELECT  gptsql.norm_all(model, 'ln_f', config.n_layer, blocks.h)
    FROM    blocks, config
    WHERE   blocks.block = config.n_layer;
END;
