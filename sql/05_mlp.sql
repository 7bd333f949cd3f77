-- 05_mlp.sql — the feed-forward network: n_embd -> 4 n_embd (GELU) -> n_embd.
--
-- c_fc's 4 n_embd outputs come back as parts of n_embd, which is how c_proj's rows read them.

CREATE OR REPLACE FUNCTION gptsql.mlp(model int, block int, x vector[])
RETURNS vector[]
LANGUAGE sql STABLE AS $$
    WITH hidden AS (
            SELECT  place, grp AS part, y
            FROM    gptsql.matmul(model, block, 'c_fc', x, 1, 'gelu')
    )
    SELECT  array_agg(y ORDER BY place)
    FROM    gptsql.matmul(model, block, 'mlp_proj',
                          ARRAY(SELECT y FROM hidden ORDER BY place, part),
                          (SELECT count(DISTINCT part)::int FROM hidden))
$$;
