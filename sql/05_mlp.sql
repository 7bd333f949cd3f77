-- 05_mlp.sql — the feed-forward network, over a share of its hidden units:
-- n_embd -> 4 n_embd (GELU) -> n_embd.
--
-- c_fc's hidden units are stored as mlp_groups groups of n_embd, and c_proj's rows as the same
-- number of parts, each reading one group. A share takes the groups [lo, hi) of c_fc and the parts
-- of c_proj's rows that read them: its partial n_embd vector per place. The shares' partials add up
-- to the MLP's output (06_blocks.sql); c_proj's bias sits on its part 0 rows, counted once.

CREATE FUNCTION gptsql.mlp_share(model int, block int, x vector[], share int, shares int)
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH groups AS (
            SELECT  s.lo, s.hi
            FROM    gptsql.model m, gptsql.share_of(m.mlp_groups, share, shares) AS s
            WHERE   m.id = model
    ), hidden AS (
            SELECT  y.place, y.grp AS part, y.y
            FROM    groups, gptsql.matmul(model, block, 'c_fc', x, ARRAY(SELECT generate_series(groups.lo, groups.hi - 1)),
                                          0, 1, 'gelu') AS y
    )
    SELECT  array_agg(y.y ORDER BY y.place)
    FROM    groups, gptsql.matmul(model, block, 'mlp_proj', ARRAY(SELECT y FROM hidden ORDER BY place, part),
                                  ARRAY[0], groups.lo, groups.hi - groups.lo) AS y;   -- its n_embd outputs: one group
END;
