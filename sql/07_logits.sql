-- 07_logits.sql — from the last hidden state to the next token.
--
-- Logits are inner products with the token embeddings (GPT-2 ties the output layer to wte);
-- softmax over the whole vocabulary turns them into probabilities.

CREATE OR REPLACE FUNCTION gptsql.logits(model int, hidden vector)
RETURNS TABLE (token int, logit float8)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH query AS (                     -- cast once for float16 models (halfvec column h)
            SELECT  hidden AS hv, hidden::halfvec AS hh
    )
    SELECT  wte.token, coalesce(inner_product(query.hv, wte.w), inner_product(query.hh, wte.h))
    FROM    query, gptsql.wte
    WHERE   wte.model_id = model
$$;

-- The top_n most probable next tokens (all of them when top_n is NULL) with their probability
-- under the softmax over the whole vocabulary.
CREATE OR REPLACE FUNCTION gptsql.distribution(model int, hidden vector, top_n int DEFAULT NULL)
RETURNS TABLE (rank int, token int, probability float8, logit float8)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH logits AS MATERIALIZED (
            SELECT  * FROM gptsql.logits(model, hidden)
    ), peak AS (
            SELECT  max(logit) AS top FROM logits
    ), total AS (                       -- softmax denominator, shifted by the peak to stay finite
            SELECT  sum(gptsql.safe_exp(logit - top)) AS z FROM logits, peak
    ), best AS (
            SELECT  token, logit FROM logits ORDER BY logit DESC, token LIMIT top_n
    )
    SELECT  (row_number() OVER (ORDER BY logit DESC, token))::int, token,
            gptsql.safe_exp(logit - top) / z, logit
    FROM    best, peak, total
    ORDER BY logit DESC, token
$$;

-- A uniform number in [0, 1) for a seed and a place: the same seed draws the same text, whatever
-- else runs at the same time.
DROP FUNCTION IF EXISTS gptsql.uniform(float8, int);          -- seeds were float8 before
CREATE OR REPLACE FUNCTION gptsql.uniform(seed bigint, place int)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || substr(md5(seed::text || ':' || place::text), 1, 13))::bit(52)::bigint / 4503599627370496.0
$$;

-- A uniform number in (0, 1) for each token of a draw: a hash of the token and the draw's own
-- uniform u, so one u (from the seed and the place) decides the whole draw.
CREATE OR REPLACE FUNCTION gptsql.token_uniform(u float8, token int)
RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT  (((hashint8extended(token, (u * 4503599627370496)::bigint) >> 11) & 9007199254740991)::float8 + 0.5)
            / 9007199254740992
$$;

-- Choose the next token. Temperature 0 is greedy (ties go to the lower id, as argmax does).
-- Sampling from the whole vocabulary (no top_k, no top_p) takes the Gumbel-max trick: the token
-- with the largest logit / temperature + Gumbel noise is a draw from softmax(logits / temperature),
-- with one pass over the logits and no sort. With top_k or top_p, logits / temperature are cut to
-- the top_k (0: all) and to the smallest set whose probability reaches top_p, and u picks from
-- what is left by its cumulative probability; only the 1000 best are sorted unless the nucleus
-- reaches past them. Also returns the ten most probable tokens, for the run's record.
CREATE OR REPLACE FUNCTION gptsql.choose(model int, hidden vector, temperature float8, top_k int,
                                         top_p float8, u float8)
RETURNS TABLE (token int, probability float8, logit float8,
               top_tokens int[], top_probabilities float8[], top_logits float8[])
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH logits AS MATERIALIZED (
            SELECT  * FROM gptsql.logits(model, hidden)
    ), best AS MATERIALIZED (           -- the ten most probable: recorded, and greedy's choice
            SELECT  token, logit FROM logits ORDER BY logit DESC, token LIMIT 10
    ), peak AS (
            SELECT  max(logit) AS top FROM best
    ), total AS (                       -- softmax denominator over the whole vocabulary
            SELECT  sum(gptsql.safe_exp(logit - top)) AS z FROM logits, peak
    ), greedy AS (
            SELECT  token, logit FROM best ORDER BY logit DESC, token LIMIT 1
    ), gumbel AS (                      -- a draw from the whole vocabulary: argmax of logit / T + G
            SELECT  token, logit
            FROM    logits
            ORDER BY logit / greatest(temperature, 1e-12) - ln(-ln(gptsql.token_uniform(u, token))) DESC, token
            LIMIT   1
    ), mass AS (                        -- softmax denominator at the temperature, whole vocabulary
            SELECT  sum(gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12))) AS z
            FROM    logits, peak
    ), ranked AS (                      -- the top_k; without one, the 1000 best (a sort of 50,257 is slow)
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)) AS e
            FROM    (SELECT  token, logit
                     FROM    logits
                     ORDER BY logit DESC, token
                     LIMIT   CASE WHEN top_k > 0 THEN top_k ELSE 1000 END) AS best_ones, peak
    ), enough AS (                      -- do the 1000 best hold the nucleus (top_p of the mass)?
            SELECT  top_k > 0 OR sum(ranked.e) / mass.z >= top_p AS held
            FROM    ranked, mass
            GROUP BY mass.z
    ), tempered AS (                    -- the top_k (renormalized over them), or every token the
                                        -- nucleus can reach (as shares of the whole vocabulary)
            SELECT  token, logit, e, sum(e) OVER () AS z
            FROM    ranked
            WHERE   top_k > 0
            UNION ALL
            SELECT  token, logit, e, mass.z
            FROM    ranked, mass
            WHERE   top_k = 0 AND (SELECT held FROM enough)
            UNION ALL
            SELECT  token, logit, gptsql.safe_exp((logit - top) / greatest(temperature, 1e-12)), mass.z
            FROM    logits, peak, mass
            WHERE   top_k = 0 AND NOT (SELECT held FROM enough)
    ), nucleus AS (                     -- cumulative probability, most probable first
            SELECT  token, logit, e / z AS p,
                    sum(e) OVER (ORDER BY e DESC, token ROWS UNBOUNDED PRECEDING) / z AS cum
            FROM    tempered
    ), kept AS (                        -- top-p: keep tokens until the mass before them reaches top_p
            SELECT  token, logit, p
            FROM    nucleus
            WHERE   cum - p < top_p
    ), drawn AS (
            SELECT  token, logit,
                    sum(p) OVER (ORDER BY p DESC, token ROWS UNBOUNDED PRECEDING) / sum(p) OVER () AS cum
            FROM    kept
    ), truncated AS (                   -- the first token whose cumulative probability passes u
            SELECT  token, logit
            FROM    drawn
            ORDER BY CASE WHEN cum >= u THEN cum ELSE 2 - cum END
            LIMIT   1
    ), chosen AS (                      -- only the branch that applies runs
            SELECT * FROM greedy WHERE temperature = 0
            UNION ALL
            SELECT * FROM gumbel WHERE temperature > 0 AND top_k = 0 AND top_p >= 1
            UNION ALL
            SELECT * FROM truncated WHERE temperature > 0 AND (top_k > 0 OR top_p < 1)
    )
    SELECT  chosen.token, gptsql.safe_exp(chosen.logit - top) / z, chosen.logit,
            (SELECT array_agg(token ORDER BY logit DESC, token) FROM best),
            (SELECT array_agg(gptsql.safe_exp(logit - top) / z ORDER BY logit DESC, token) FROM best),
            (SELECT array_agg(logit ORDER BY logit DESC, token) FROM best)
    FROM    chosen, peak, total
$$;
