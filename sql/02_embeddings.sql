-- 02_embeddings.sql — what the model sees: token embedding + position embedding.
--
-- Place p of a context holds token t: its input vector is wte[t] + wpe[p]. A batch of places is
-- two aligned arrays (the tokens and their places), so a decode step embeds one new place after
-- the cached ones, and a batch embeds one place of each of its sequences.

CREATE FUNCTION gptsql.embeddings(model int, tokens int[], places int[])
RETURNS vector[]
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT  array_agg(coalesce(wte.w, wte.h::vector) + wpe.w ORDER BY input.n)
    FROM    unnest(tokens, places) WITH ORDINALITY AS input(token, place, n)
    JOIN    gptsql.wte ON wte.model_id = model AND wte.token = input.token
    JOIN    gptsql.wpe ON wpe.model_id = model AND wpe.place = input.place;
END;
