-- 02_embeddings.sql — what the model sees: token embedding + position embedding.
--
-- Place p of the context holds token t: its input vector is wte[t] + wpe[p]. `start` is the place
-- of the first token given, so a decode step embeds one new place after the cached ones.

CREATE OR REPLACE FUNCTION gptsql.embeddings(model int, tokens int[], start int)
RETURNS vector[]
LANGUAGE sql STABLE AS $$
    WITH input AS (
            SELECT  token, start + n::int - 1 AS place
            FROM    unnest(tokens) WITH ORDINALITY AS t(token, n)
    )
    SELECT  array_agg(coalesce(wte.w, wte.h::vector) + wpe.w ORDER BY input.place)
    FROM    input
    JOIN    gptsql.wte ON wte.model_id = model AND wte.token = input.token
    JOIN    gptsql.wpe ON wpe.model_id = model AND wpe.place = input.place
$$;
