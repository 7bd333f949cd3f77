-- 03_norm_linear.sql — the two operations every block repeats: a norm and y = x W + b.
--
-- pgvector gives element-wise +, -, * and inner products on whole vectors; a scalar is spread
-- over a vector with fill() so that layer norm never leaves pgvector's C loops.
--
-- A batch of places travels as a vector[] (one vector per place, in the batch's order); every
-- function here maps such an array to another of the same length.

CREATE FUNCTION gptsql.fill(value float8, n int)
RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT array_fill(value::real, ARRAY[n])::vector;
END;

-- exp() that gives 0 instead of an underflow error far below zero (PostgreSQL raises there).
CREATE FUNCTION gptsql.safe_exp(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN x < -700 THEN 0 ELSE exp(x) END;
END;

-- Heads side by side: concatenates vectors in the aggregate's ORDER BY.
CREATE AGGREGATE gptsql.concat(vector) (SFUNC = vector_concat, STYPE = vector, PARALLEL = SAFE);

-- GPT-2's GELU, the tanh approximation ("gelu_new").
CREATE FUNCTION gptsql.gelu(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 0.5 * x * (1 + tanh(sqrt(2 / pi()) * (x + 0.044715 * x * x * x)));
END;

-- The Llama family's SiLU, x * sigmoid(x) (exp() never overflows: e^-|x| only).
CREATE FUNCTION gptsql.silu(x float8)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN x >= 0 THEN x / (1 + gptsql.safe_exp(-x))
                ELSE x * gptsql.safe_exp(x) / (1 + gptsql.safe_exp(x)) END;
END;

-- (x - mean) / sqrt(variance + eps) * gamma + beta, over the n_embd elements of x.
CREATE FUNCTION gptsql.layer_norm(x vector, gamma vector, beta vector, eps float8)
RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH mean AS (
            SELECT  inner_product(x, gptsql.fill(1, vector_dims(x))) / vector_dims(x) AS mu
    ), centered AS (
            SELECT  x - gptsql.fill(mu, vector_dims(x)) AS c
            FROM    mean
    )
    SELECT  c * gptsql.fill(1 / sqrt(inner_product(c, c) / vector_dims(x) + eps), vector_dims(x))
              * gamma + beta
    FROM    centered;
END;

-- x / sqrt(mean(x²) + eps) * gamma: the Llama family's RMS norm (no mean taken away, no beta).
CREATE FUNCTION gptsql.rms_norm(x vector, gamma vector, eps float8)
RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT  x * gptsql.fill(1 / sqrt(inner_product(x, x) / vector_dims(x) + eps), vector_dims(x)) * gamma;
END;

-- A norm of the model (name 'ln_1' or 'ln_2' of a block, 'ln_f' after the last) on every place:
-- a layer norm, or an RMS norm where the model has no beta.
CREATE FUNCTION gptsql.norm_all(model int, name text, block int, h vector[])
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  array_agg(CASE WHEN norm.beta IS NULL THEN gptsql.rms_norm(x, norm.gamma, m.layer_norm_epsilon)
                           ELSE gptsql.layer_norm(x, norm.gamma, norm.beta, m.layer_norm_epsilon) END ORDER BY n)
    FROM    unnest(h) WITH ORDINALITY AS t(x, n)
    JOIN    gptsql.norm ON norm.model_id = model AND norm.name = norm_all.name AND norm.block = norm_all.block
    JOIN    gptsql.model m ON m.id = model;
END;

-- a + b, place by place (the residual adds).
CREATE FUNCTION gptsql.add_all(a vector[], b vector[])
RETURNS vector[]
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT  array_agg(x + y ORDER BY n)
    FROM    unnest(a, b) WITH ORDINALITY AS t(x, y, n);
END;

-- The whole numbers lo .. hi - 1, a share's groups (a function, not a subquery in the caller's
-- arguments: PostgreSQL inlines matmul() only into calls whose arguments hold no subquery).
CREATE FUNCTION gptsql.int_range(lo int, hi int)
RETURNS int[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT ARRAY(SELECT generate_series(lo, hi - 1));
END;

-- y = x W + b for the output groups `grps` of a layer of a block (an index condition: a share
-- reads only its own rows). x holds `n_parts` vectors per place (place-major), the parts part_lo,
-- part_lo + 1, ... of an input wider than n_embd. Each output unit is one inner product per part,
-- taken in the index's (grp, idx) order so the aggregate needs no sort; the units of a group (a
-- head of q, k or v, an n_embd slice of the MLP) come back together as one vector, and parts add
-- up as vectors. A unit's bias sits on its part 0 row, so the share reading part 0 adds it.
-- float16 models keep their weights in the halfvec column h (x is cast once per place), float32
-- models in w; the other column is NULL and its inner product costs nothing.
-- `activation` ('gelu', 'silu') applies to single-part layers (c_fc). It is applied one level up
-- from the inner product (OFFSET 0 keeps `a` a column), so it is inlined rather than called per unit.
CREATE FUNCTION gptsql.matmul(model int, block int, layer text, x vector[], grps int[],
                              part_lo int DEFAULT 0, n_parts int DEFAULT 1, activation text DEFAULT NULL)
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH input AS (
            SELECT  (n::int - 1) / n_parts AS place, part_lo + (n::int - 1) % n_parts AS part, xv, xv::halfvec AS xh
            FROM    unnest(x) WITH ORDINALITY AS t(xv, n)
    ), partials AS (                    -- per place and part: a lateral index scan in (grp, idx) order
            SELECT  input.place, unit.grp, unit.y
            FROM    input
            CROSS JOIN LATERAL (
                    SELECT  dot.grp,
                            array_agg((CASE activation WHEN 'gelu' THEN gptsql.gelu(dot.a)
                                                       WHEN 'silu' THEN gptsql.silu(dot.a) ELSE dot.a END)::real
                                      ORDER BY dot.idx)::vector AS y
                    FROM    (SELECT  w.grp, w.idx,
                                     coalesce(inner_product(input.xv, w.w), inner_product(input.xh, w.h)) + w.bias AS a
                             FROM    gptsql.linear w
                             WHERE   w.model_id = model AND w.name = layer AND w.block = matmul.block
                               AND   w.part = input.part AND w.grp = ANY (grps)
                             ORDER BY w.grp, w.idx
                             OFFSET  0) AS dot
                    GROUP BY dot.grp
            ) unit
    )
    SELECT  partials.place, partials.grp, sum(partials.y)
    FROM    partials
    GROUP BY partials.place, partials.grp;
END;
