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

-- The batches a layer's places are taken in: (first place, how many, the width W of the
-- products_W that takes them). 64 at a time, the rest in the narrowest W that holds it.
CREATE FUNCTION gptsql.place_batches(places int)
RETURNS TABLE (first int, n int, width int)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT  b.first, least(places - b.first, 64),
            (SELECT min(w) FROM unnest(ARRAY[1, 4, 16, 64]) AS w WHERE w >= least(places - b.first, 64))
    FROM    generate_series(0, places - 1, 64) AS b(first);
END;

-- The activation a layer's units go through: 'gelu', 'silu', none (NULL), or 'one' (a constant
-- 1: a SwiGLU unit's gate held open, so that its up projection shows alone).
CREATE FUNCTION gptsql.activate(a float8, activation text)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE activation WHEN 'gelu' THEN gptsql.gelu(a) WHEN 'silu' THEN gptsql.silu(a) WHEN 'one' THEN 1 ELSE a END;
END;

-- Inner products of up to W places with a layer's weight rows, every row read once for all of them:
-- gptsql.products_W (the rows of a part of gptsql.linear), gptsql.gated_products_W (c_fc's rows of
-- a SwiGLU MLP: per unit activation(gate) × up, both rows in one tuple) and
-- gptsql.projection_products_W (a share's rows of the attention projection,
-- gptsql.projection_share), for W in 1, 4, 16, 64. A row's W products are W columns of one tuple,
-- so the executor builds one tuple per weight row, not one per product (0.15-0.3 µs a product
-- against ~1 µs with a tuple each); each place's vector is taken from x once per call (an
-- uncorrelated subquery), not once per row. The functions are one text with W columns, written out
-- below; their plans are kept like any SQL function's.
--
-- xh is x as halfvec, for float16 models (their weights are in h, w NULL; float32 models the other
-- way round, and the NULL product costs nothing). Places past the end of x are NULL columns. Per
-- place (0 .. W - 1) and group: its units (in idx order, through the activation) as one vector,
-- biases included (a unit's bias sits on its part 0 row).
DO $generate$
DECLARE
    template constant text := $template$
CREATE FUNCTION gptsql.%1$s_%2$s(%3$s, x vector[], xh halfvec[])
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH weight_rows AS (               -- a row's inner products with each place: a_1 .. a_W (b_k: up's)
            SELECT  r.grp, r.idx, %5$s
            FROM    (%4$s) AS r
            ORDER BY r.grp, r.idx
            OFFSET  0
    ), units AS (                       -- per group, each place's units side by side
            SELECT  weight_rows.grp, %6$s
            FROM    weight_rows
            GROUP BY weight_rows.grp
    )
    SELECT  p.place, units.grp, p.y::vector
    FROM    units
    CROSS JOIN LATERAL (VALUES %7$s) AS p(place, y)
    WHERE   p.place < cardinality(x);
END;
$template$;
    product constant text :=
        'coalesce(inner_product((SELECT x[%1$s]), r.%2$s), inner_product((SELECT xh[%1$s]), r.%3$s))';
    linear_rows constant text :=
        'SELECT  w.grp, w.idx, w.w, w.h, w.bias, w.up_w, w.up_h
         FROM    gptsql.linear w
         WHERE   w.model_id = model AND w.name = layer AND w.block = %1$s_%2$s.block
           AND   w.part = %1$s_%2$s.part AND w.grp = ANY (grps)';
    linear_args constant text := 'model int, block int, layer text, grps int[], part int, activation text';
    width    int;
    family   record;
    dispatch text := '';
BEGIN
    FOR family IN
        SELECT  *
        FROM    (VALUES ('products', linear_args, linear_rows, 'activation', false,
                         'model, block, layer, grps, part, activation'),
                        ('gated_products', linear_args, linear_rows, 'activation', true,
                         'model, block, layer, grps, part, activation'),
                        ('projection_products', 'model int, block int, head_lo int, head_hi int',
                         'SELECT  s.grp, s.idx, s.w, s.h, CASE WHEN head_lo = 0 THEN s.bias ELSE 0 END AS bias
                          FROM    gptsql.projection_share s
                          WHERE   s.model_id = model AND s.head_lo = %1$s_%2$s.head_lo
                            AND   s.head_hi = %1$s_%2$s.head_hi AND s.block = %1$s_%2$s.block', 'NULL', false,
                         'model, block, heads[1], heads[2]'))
                AS f(name, args, rows_query, activation, gated, call_args)
    LOOP
        dispatch := dispatch || format(E'\n            WHEN %L THEN CASE batch.width', family.name);
        FOREACH width IN ARRAY ARRAY[1, 4, 16, 64] LOOP
            EXECUTE format(template, family.name, width, family.args, format(family.rows_query, family.name, width),
                (SELECT string_agg(format('%s + r.bias AS a_%s', format(product, k, 'w', 'h'), k)
                                   || CASE WHEN family.gated THEN format(', %s AS b_%s', format(product, k, 'up_w', 'up_h'), k) ELSE '' END,
                                   E',\n                    ') FROM generate_series(1, width) AS k),
                (SELECT string_agg(format(
                    'array_agg((gptsql.activate(weight_rows.a_%1$s, %2$s)%3$s)::real ORDER BY weight_rows.idx) AS y_%1$s',
                    k, family.activation, CASE WHEN family.gated THEN format(' * weight_rows.b_%s', k) ELSE '' END),
                    E',\n                    ') FROM generate_series(1, width) AS k),
                (SELECT string_agg(format('(%s, units.y_%s)', k - 1, k), ', ') FROM generate_series(1, width) AS k));
            dispatch := dispatch || format(E'\n                WHEN %s THEN RETURN QUERY SELECT batch.first + p.place, p.grp, p.y\n'
                                           '                                          FROM   gptsql.%s_%s(%s, xs, xhs) AS p;',
                                           width, family.name, width, family.call_args);
        END LOOP;
        dispatch := dispatch || E'\n                END CASE;';
    END LOOP;

    -- y = x W + b for the output groups `grps` of a layer of a block (an index condition: a share
    -- reads only its own rows), `activation` ('gelu', 'silu') applied to single-part layers (c_fc): per
    -- place and group, the group's units (a head of q, k or v, an n_embd slice of the MLP) as one
    -- vector. x holds n_parts vectors per place (place-major), the parts part_lo, part_lo + 1, ... of
    -- an input wider than n_embd (mlp_proj's rows are cut so); each part gives its own rows, to be
    -- added up. With `up`, each unit of c_fc is activation(gate) × up (SwiGLU). With `heads` ({lo,
    -- hi}), the layer is the attention projection cut to the columns of key/value heads [lo, hi)
    -- (gptsql.projection_share), its bias added by the share whose heads start at 0. The places go
    -- in batches (place_batches), each to the products_W of its width: one statement per family and
    -- width, so that a plan holds only the function it runs (its start-up is per call).
    EXECUTE format($matmul$
CREATE FUNCTION gptsql.matmul(model int, block int, layer text, x vector[], grps int[],
                              part_lo int DEFAULT 0, n_parts int DEFAULT 1, activation text DEFAULT NULL,
                              heads int[] DEFAULT NULL, up boolean DEFAULT false)
RETURNS TABLE (place int, grp int, y vector)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan   -- plans made once (custom plans: at every call)
AS $body$
DECLARE
    half   boolean := EXISTS (SELECT FROM gptsql.model m WHERE m.id = model AND m.dtype = 'float16');
    family text := CASE WHEN heads IS NOT NULL THEN 'projection_products' WHEN up THEN 'gated_products' ELSE 'products' END;
    batch  record;
    part   int;
    xs     vector[];
    xhs    halfvec[];
BEGIN
    FOR batch IN SELECT * FROM gptsql.place_batches(cardinality(x) / n_parts) LOOP
        FOR j IN 0 .. n_parts - 1 LOOP
            part := part_lo + j;
            xs := ARRAY(SELECT x[(batch.first + k) * n_parts + j + 1] FROM generate_series(0, batch.n - 1) AS k);
            xhs := CASE WHEN half THEN ARRAY(SELECT v::halfvec FROM unnest(xs) AS v) END;
            CASE family%s
            END CASE;
        END LOOP;
    END LOOP;
END
$body$;
$matmul$, dispatch);
END
$generate$;
