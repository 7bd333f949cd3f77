-- 05_mlp.sql — the feed-forward network, over a share of its hidden units:
--   GPT-2:        n_embd -> n_inner (GELU) -> n_embd
--   Llama family: n_embd -> n_inner as silu(gate) * up (SwiGLU) -> n_embd
--
-- The hidden units are stored as mlp_groups groups of c_fc's rows (SwiGLU's gate rows, each with
-- its up row), and mlp_proj's rows as the same number of parts, each reading one group. A share
-- takes the groups [lo, hi) and the parts of mlp_proj's rows that read them: its partial n_embd
-- vector per place. The shares' partials add up to the MLP's output (06_blocks.sql); mlp_proj's
-- bias sits on its part 0 rows, counted once.

-- The hidden units of groups [lo, hi) for a batch of places (normalized inputs x), per place and
-- group: GELU(c_fc), or silu(gate) × up from c_fc's rows that carry both (SwiGLU).
CREATE FUNCTION gptsql.mlp_hidden(model int, block int, x vector[], lo int, hi int)
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  h.place, h.grp, h.y
    FROM    gptsql.model m,
            gptsql.matmul(model, block, 'c_fc', x, gptsql.int_range(lo, hi), 0, 1,
                          CASE m.family WHEN 'llama' THEN 'silu' ELSE 'gelu' END, NULL, m.family = 'llama') AS h
    WHERE   m.id = model;
END;

CREATE FUNCTION gptsql.mlp_share(model int, block int, x vector[], share int, shares int)
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH groups AS (
            SELECT  s.lo, s.hi
            FROM    gptsql.model m, gptsql.share_of(m.mlp_groups, share, shares) AS s
            WHERE   m.id = model
    ), hidden AS (
            SELECT  h.place, h.grp AS part, h.y
            FROM    groups, gptsql.mlp_hidden(model, block, x, groups.lo, groups.hi) AS h
    )
    SELECT  array_agg(y.y ORDER BY y.place)
    FROM    (SELECT  p.place, sum(p.y) AS y                                         -- the parts added up
             FROM    groups, gptsql.matmul(model, block, 'mlp_proj', ARRAY(SELECT y FROM hidden ORDER BY place, part),
                                           ARRAY[0], groups.lo, groups.hi - groups.lo) AS p   -- n_embd outputs: one group
             GROUP BY p.place) AS y;
END;
