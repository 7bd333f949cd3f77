-- 03_norm_linear.sql — the two operations every block repeats: layer norm and y = x W + b.
--
-- pgvector gives element-wise +, -, * and inner products on whole vectors; a scalar is spread
-- over a vector with fill() so that layer norm never leaves pgvector's C loops.

CREATE OR REPLACE FUNCTION gptsql.fill(value float8, n int)
RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_fill(value::real, ARRAY[n])::vector
$$;

-- exp() that gives 0 instead of an underflow error far below zero (PostgreSQL raises there).
CREATE OR REPLACE FUNCTION gptsql.safe_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x < -700 THEN 0 ELSE exp(x) END
$$;

-- Heads side by side: concatenates vectors in the aggregate's ORDER BY.
CREATE OR REPLACE AGGREGATE gptsql.concat(vector) (SFUNC = vector_concat, STYPE = vector, PARALLEL = SAFE);

-- GPT-2's GELU, the tanh approximation ("gelu_new").
CREATE OR REPLACE FUNCTION gptsql.gelu(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)))
$$;

-- (x - mean) / sqrt(variance + eps) * gamma + beta, over the n_embd elements of x.
CREATE OR REPLACE FUNCTION gptsql.layer_norm(x vector, gamma vector, beta vector, eps float8)
RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH mean AS (
            SELECT  inner_product(x, gptsql.fill(1, vector_dims(x))) / vector_dims(x) AS mu
    ), centered AS (
            SELECT  x - gptsql.fill(mu, vector_dims(x)) AS c
            FROM    mean
    )
    SELECT  c * gptsql.fill(1 / sqrt(inner_product(c, c) / vector_dims(x) + eps), vector_dims(x))
              * gamma + beta
    FROM    centered
$$;

-- y = x W + b for a layer of a block. x holds `n_parts` vectors per place (place-major) when the
-- input is wider than n_embd. Each output unit is one inner product per part, taken in the index's
-- (grp, idx) order so the aggregate needs no sort; the units of a group (a head of q, k or v, an
-- n_embd slice of the MLP) come back together as one vector, and parts add up as vectors.
-- float16 models keep their weights in the halfvec column h (x is cast once per place), float32
-- models in w; the other column is NULL and its inner product costs nothing.
-- `activation` ('gelu') applies to single-part layers (c_fc). It is applied one level up from the
-- inner product (OFFSET 0 keeps `a` a column), so gelu() is inlined rather than called per unit.
CREATE OR REPLACE FUNCTION gptsql.matmul(model int, block int, layer text, x vector[],
                                         n_parts int DEFAULT 1, activation text DEFAULT NULL)
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE sql STABLE AS $$
    WITH input AS (
            SELECT  (n::int - 1) / n_parts AS place, (n::int - 1) % n_parts AS part, xv, xv::halfvec AS xh
            FROM    unnest(x) WITH ORDINALITY AS t(xv, n)
            ORDER BY n
    ), partials AS (                    -- per place and part: a lateral index scan in (grp, idx) order
            SELECT  input.place, input.part, unit.grp, unit.y
            FROM    input
            CROSS JOIN LATERAL (
                    SELECT  dot.grp,
                            array_agg((CASE activation WHEN 'gelu' THEN gptsql.gelu(dot.a) ELSE dot.a END)::real
                                      ORDER BY dot.idx)::vector AS y
                    FROM    (SELECT  w.grp, w.idx,
                                     coalesce(inner_product(input.xv, w.w), inner_product(input.xh, w.h)) + w.bias AS a
                             FROM    gptsql.linear w
                             WHERE   w.model_id = model AND w.name = layer AND w.block = matmul.block
                               AND   w.part = input.part
                             ORDER BY w.grp, w.idx
                             OFFSET  0) AS dot
                    GROUP BY dot.grp
            ) unit
    )
    SELECT  place, grp, sum(y)
    FROM    partials
    GROUP BY place, grp
$$;
