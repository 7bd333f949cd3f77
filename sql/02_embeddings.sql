-- 02_embeddings.sql — what the model sees: token embedding (+ position embedding).
--
-- Place p of a context holds token t: its input vector is wte[t] + wpe[p] (GPT-2), or wte[t] alone
-- (the Llama family, whose attention turns q and k by their place: gptsql.rope). A batch of places
-- is two aligned arrays (the tokens and their places), so a decode step embeds one new place after
-- the cached ones, and a batch embeds one place of each of its sequences.

CREATE FUNCTION gptsql.embeddings(model int, tokens int[], places int[])
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  array_agg(CASE WHEN wpe.w IS NULL THEN coalesce(wte.w, wte.h::vector)
                           ELSE coalesce(wte.w, wte.h::vector) + wpe.w END ORDER BY input.n)
    FROM    unnest(tokens, places) WITH ORDINALITY AS input(token, place, n)
    JOIN    gptsql.wte ON wte.model_id = model AND wte.token = input.token
    LEFT JOIN gptsql.wpe ON wpe.model_id = model AND wpe.place = input.place;
END;

-- The rotary embeddings' cosines and sines of every place (gptsql.rope) of a model with rope_theta:
-- angle i of place p is p * theta^(-2i / head_dim), once for each half of a head. The angles are
-- taken in float32 as HF's Llama takes them, so that a long context turns q and k as it does.
CREATE FUNCTION gptsql.make_rope(model int)
RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH config AS (
            SELECT  m.n_ctx, m.n_embd / m.n_head AS d, m.rope_theta
            FROM    gptsql.model m
            WHERE   m.id = model AND m.rope_theta IS NOT NULL
    ), frequency AS (
            SELECT  i, (1 / power(config.rope_theta, (2 * i)::float8 / config.d))::real AS inverse
            FROM    config, generate_series(0, config.d / 2 - 1) AS i
    ), angle AS (
            SELECT  p.place, f.i, (p.place::real * f.inverse)::float8 AS a
            FROM    config, generate_series(0, config.n_ctx - 1) AS p(place), frequency f
    )
    INSERT INTO gptsql.rope (model_id, place, cos, sin)
    SELECT  model, angle.place,
            (array_agg(cos(angle.a)::real ORDER BY angle.i) || array_agg(cos(angle.a)::real ORDER BY angle.i))::vector,
            (array_agg(-sin(angle.a)::real ORDER BY angle.i) || array_agg(sin(angle.a)::real ORDER BY angle.i))::vector
    FROM    angle
    GROUP BY angle.place;
END;
