-- 09_runs.sql — views for exploring models and runs from psql.
--
-- Every generation and prediction is a row of gptsql.run; when run.record is true the engine also
-- keeps, per block and place, the residual stream (gptsql.residual), per block, head and place the
-- attention weights (gptsql.attention_row), and the ten best candidates of each step
-- (gptsql.step_logit). The views below give those rows self-explaining names, token ids their
-- pieces of text, and every column a comment (\d+ gptsql.runs in psql shows them).
--
-- Places count from 0: the prompt's tokens are places 0 .. prompt_tokens - 1, the generated ones
-- follow. The last generated token is chosen but never read back, so activations stop one place
-- before it.
CREATE VIEW gptsql.model_size AS
SELECT  m.name, m.source, m.n_layer, m.n_embd, m.n_head, m.n_ctx, m.n_vocab, m.n_params,
        (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.wte x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.wpe x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.norm x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.linear x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.token x WHERE x.model_id = m.id)
      + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM gptsql.merge x WHERE x.model_id = m.id)
        AS bytes,
        m.loaded_at
FROM    gptsql.model m;
COMMENT ON VIEW gptsql.model_size IS 'Loaded models with their shapes, parameter count and bytes of their rows.';

-- The newest run (of a kind, when given): what the README's queries explore right after
-- `gptsql generate`, and what the CLI's `latest` means.
CREATE FUNCTION gptsql.latest_run(kind text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT  max(r.id)
    FROM    gptsql.run r
    WHERE   r.kind = latest_run.kind OR latest_run.kind IS NULL
$$;
COMMENT ON FUNCTION gptsql.latest_run(text) IS
    'Id of the newest run: of any kind by default (as the CLI''s latest), or of this kind (''generate'' or ''predict'').';

------------------------------------------------------------------------------------------------ runs
CREATE VIEW gptsql.runs AS
SELECT  r.id AS run, m.name AS model, r.kind, r.status, r.error, r.prompt,
        t.generated_text, t.prompt_tokens, t.generated_tokens,
        r.max_tokens, r.temperature, r.top_k, r.top_p, r.seed, r.record AS recorded,
        r.started_at, r.finished_at,
        (extract(epoch FROM r.finished_at - r.started_at) * 1000)::float8 AS total_ms,
        coalesce(r.prefill_ms, t.first_step_ms) AS prefill_ms,
        coalesce(r.decode_ms, (t.step_ms - t.first_step_ms) / nullif(t.generated_tokens - 1, 0)) AS decode_ms_per_token,
        t.generated_tokens / nullif(t.step_ms, 0) * 1000 AS tokens_per_second
FROM    gptsql.run r
JOIN    gptsql.model m ON m.id = r.model_id
CROSS JOIN LATERAL (                    -- the run's tokens, counted, timed and (the generated ones) read back
        SELECT  count(*) FILTER (WHERE rt.is_prompt) AS prompt_tokens,
                count(*) FILTER (WHERE NOT rt.is_prompt) AS generated_tokens,
                gptsql.detokenize(coalesce(array_agg(rt.token ORDER BY rt.place)
                                           FILTER (WHERE NOT rt.is_prompt AND tok.piece <> '<|endoftext|>'),
                                           '{}'), m.name) AS generated_text,
                (array_agg(rt.elapsed_ms ORDER BY rt.place) FILTER (WHERE NOT rt.is_prompt))[1] AS first_step_ms,
                sum(rt.elapsed_ms) AS step_ms
        FROM    gptsql.run_token rt
        JOIN    gptsql.token tok ON tok.model_id = r.model_id AND tok.token = rt.token
        WHERE   rt.run_id = r.id
) t;
COMMENT ON VIEW gptsql.runs IS
    'One row per generation or prediction: model, parameters, status, token counts, the generated text and timings.';
COMMENT ON COLUMN gptsql.runs.run IS 'Id of the run (gptsql.run.id); every other view is filtered by it.';
COMMENT ON COLUMN gptsql.runs.model IS 'Name of the model that ran (gptsql.model.name).';
COMMENT ON COLUMN gptsql.runs.kind IS '''generate'' (gptsql generate, gptsql.generate) or ''predict'' (the next-token table only).';
COMMENT ON COLUMN gptsql.runs.status IS 'running, done, failed (see error) or interrupted (Ctrl-C).';
COMMENT ON COLUMN gptsql.runs.error IS 'Why a failed run failed; NULL otherwise.';
COMMENT ON COLUMN gptsql.runs.prompt IS 'The prompt as given (an empty prompt starts from <|endoftext|>).';
COMMENT ON COLUMN gptsql.runs.generated_text IS 'The continuation: the generated tokens read back as text, without <|endoftext|>.';
COMMENT ON COLUMN gptsql.runs.prompt_tokens IS 'How many tokens the prompt became (places 0 .. prompt_tokens - 1).';
COMMENT ON COLUMN gptsql.runs.generated_tokens IS 'How many tokens were generated (an <|endoftext|> that ended the run counts).';
COMMENT ON COLUMN gptsql.runs.max_tokens IS 'How many tokens were asked for.';
COMMENT ON COLUMN gptsql.runs.temperature IS 'Sampling temperature; 0 is greedy (the most probable token every time).';
COMMENT ON COLUMN gptsql.runs.top_k IS 'Sampling kept only the k most probable tokens (0: all).';
COMMENT ON COLUMN gptsql.runs.top_p IS 'Sampling kept only the most probable tokens whose mass reaches p (1: all).';
COMMENT ON COLUMN gptsql.runs.seed IS 'Seed of the draws (same seed, same text); NULL: random().';
COMMENT ON COLUMN gptsql.runs.recorded IS 'Whether activations were kept (residual stream, attention, candidates); false with --no-record.';
COMMENT ON COLUMN gptsql.runs.started_at IS 'When the run started.';
COMMENT ON COLUMN gptsql.runs.finished_at IS 'When it finished; NULL while running.';
COMMENT ON COLUMN gptsql.runs.total_ms IS 'Wall time from start to finish in milliseconds, client round trips included.';
COMMENT ON COLUMN gptsql.runs.prefill_ms IS 'Milliseconds of the first step: the whole prompt through the blocks and the first token chosen.';
COMMENT ON COLUMN gptsql.runs.decode_ms_per_token IS 'Average milliseconds of each later step: one new place through the blocks (KV cache) and a choice.';
COMMENT ON COLUMN gptsql.runs.tokens_per_second IS 'Generated tokens per second of database time (prefill included).';

------------------------------------------------------------------------------------------ run_tokens
CREATE VIEW gptsql.run_tokens AS
SELECT  rt.run_id AS run, rt.place, rt.token, tok.piece, rt.is_prompt, rt.probability, rt.logit,
        cand.rank, rt.elapsed_ms
FROM    gptsql.run_token rt
JOIN    gptsql.run r ON r.id = rt.run_id
JOIN    gptsql.token tok ON tok.model_id = r.model_id AND tok.token = rt.token
LEFT JOIN gptsql.step_logit cand         -- the chosen token among the step's ten best, if it was
        ON cand.run_id = rt.run_id AND cand.place = rt.place - 1 AND cand.token = rt.token
           AND NOT rt.is_prompt;
COMMENT ON VIEW gptsql.run_tokens IS
    'Every token of a run in order: the prompt''s, then the generated ones with the probability each had when chosen.';
COMMENT ON COLUMN gptsql.run_tokens.run IS 'Id of the run (gptsql.runs.run).';
COMMENT ON COLUMN gptsql.run_tokens.place IS 'Position in the context, from 0.';
COMMENT ON COLUMN gptsql.run_tokens.token IS 'Token id in the model''s vocabulary.';
COMMENT ON COLUMN gptsql.run_tokens.piece IS 'The token''s text (GPT-2 tokens usually carry their leading space; U+FFFD where a token ends mid-character).';
COMMENT ON COLUMN gptsql.run_tokens.is_prompt IS 'true for the prompt''s tokens, false for generated ones.';
COMMENT ON COLUMN gptsql.run_tokens.probability IS 'Probability the model gave this token when it was chosen (softmax at temperature 1 over the whole vocabulary); NULL for the prompt.';
COMMENT ON COLUMN gptsql.run_tokens.logit IS 'Its logit (inner product of the last hidden state with the token''s embedding); NULL for the prompt.';
COMMENT ON COLUMN gptsql.run_tokens.rank IS 'Its rank among the step''s candidates (1: the most probable); NULL for the prompt, outside the ten recorded, or not recorded.';
COMMENT ON COLUMN gptsql.run_tokens.elapsed_ms IS 'Milliseconds the database spent on the step that chose it; NULL for the prompt.';

------------------------------------------------------------------------------------- step_candidates
CREATE VIEW gptsql.step_candidates AS
WITH prompt AS (
        SELECT  rt.run_id, count(*)::int AS n
        FROM    gptsql.run_token rt
        WHERE   rt.is_prompt
        GROUP BY rt.run_id
)
SELECT  sl.run_id AS run, sl.place + 2 - prompt.n AS step, sl.place + 1 AS place,
        before.piece AS after_piece, sl.rank, sl.token, tok.piece, sl.probability, sl.logit,
        coalesce(sl.token = chosen.token, false) AS chosen
FROM    gptsql.step_logit sl
JOIN    gptsql.run r ON r.id = sl.run_id
JOIN    prompt ON prompt.run_id = sl.run_id
JOIN    gptsql.token tok ON tok.model_id = r.model_id AND tok.token = sl.token
LEFT JOIN gptsql.run_token last_read     -- the token the model had just read
        ON last_read.run_id = sl.run_id AND last_read.place = sl.place
LEFT JOIN gptsql.token before ON before.model_id = r.model_id AND before.token = last_read.token
LEFT JOIN gptsql.run_token chosen        -- what the run went on with (the draw may differ from rank 1)
        ON chosen.run_id = sl.run_id AND chosen.place = sl.place + 1 AND NOT chosen.is_prompt;
COMMENT ON VIEW gptsql.step_candidates IS
    'The best candidates for the next token at each step of a run (ten per step; for a prediction, as many as asked).';
COMMENT ON COLUMN gptsql.step_candidates.run IS 'Id of the run (gptsql.runs.run).';
COMMENT ON COLUMN gptsql.step_candidates.step IS 'Which generated token this step chose: 1 for the first.';
COMMENT ON COLUMN gptsql.step_candidates.place IS 'The place the chosen token took in the context (prompt_tokens - 1 + step).';
COMMENT ON COLUMN gptsql.step_candidates.after_piece IS 'The last token the model had read when it scored the candidates.';
COMMENT ON COLUMN gptsql.step_candidates.rank IS '1 for the most probable candidate (ties go to the lower token id).';
COMMENT ON COLUMN gptsql.step_candidates.token IS 'Candidate token id.';
COMMENT ON COLUMN gptsql.step_candidates.piece IS 'Candidate token''s text.';
COMMENT ON COLUMN gptsql.step_candidates.probability IS 'Its probability: softmax of the logits over the whole vocabulary, at temperature 1.';
COMMENT ON COLUMN gptsql.step_candidates.logit IS 'Its logit.';
COMMENT ON COLUMN gptsql.step_candidates.chosen IS 'Whether the run went on with this candidate (with sampling it may be none of the ten).';

----------------------------------------------------------------------------------- attention_weights
CREATE VIEW gptsql.attention_weights AS
SELECT  a.run_id AS run, a.block, a.head, a.place AS query_place, q.piece AS query_piece,
        k.key_place, kp.piece AS key_piece, k.weight
FROM    gptsql.attention_row a
JOIN    gptsql.run r ON r.id = a.run_id
CROSS JOIN LATERAL unnest(a.weights) WITH ORDINALITY AS w(weight, n)
CROSS JOIN LATERAL (SELECT w.n::int - 1 AS key_place, w.weight) k     -- weights[k + 1] is key place k
LEFT JOIN gptsql.run_token qt ON qt.run_id = a.run_id AND qt.place = a.place
LEFT JOIN gptsql.token q ON q.model_id = r.model_id AND q.token = qt.token
LEFT JOIN gptsql.run_token kt ON kt.run_id = a.run_id AND kt.place = k.key_place
LEFT JOIN gptsql.token kp ON kp.model_id = r.model_id AND kp.token = kt.token;
COMMENT ON VIEW gptsql.attention_weights IS
    'Who attended to whom: one row per run, block, head, query place and key place (at or before the query), with the softmax weight.';
COMMENT ON COLUMN gptsql.attention_weights.run IS 'Id of the run (gptsql.runs.run); only recorded runs have rows.';
COMMENT ON COLUMN gptsql.attention_weights.block IS 'Transformer block, from 0 to n_layer - 1.';
COMMENT ON COLUMN gptsql.attention_weights.head IS 'Attention head, from 0 to n_head - 1.';
COMMENT ON COLUMN gptsql.attention_weights.query_place IS 'The place that looks (its query).';
COMMENT ON COLUMN gptsql.attention_weights.query_piece IS 'The token at the query place.';
COMMENT ON COLUMN gptsql.attention_weights.key_place IS 'The place looked at (its key and value), at or before the query place: the causal mask.';
COMMENT ON COLUMN gptsql.attention_weights.key_piece IS 'The token at the key place.';
COMMENT ON COLUMN gptsql.attention_weights.weight IS 'softmax(q·k / sqrt(head_dim)) over the key places: the weights of a query place sum to 1.';

------------------------------------------------------------------------------------- residual_norms
CREATE VIEW gptsql.residual_norms AS
SELECT  res.run_id AS run, res.block, res.place, tok.piece,
        vector_norm(res.after_attention) AS norm_after_attention,
        vector_norm(res.after_mlp) AS norm_after_mlp
FROM    gptsql.residual res
JOIN    gptsql.run r ON r.id = res.run_id
LEFT JOIN gptsql.run_token rt ON rt.run_id = res.run_id AND rt.place = res.place
LEFT JOIN gptsql.token tok ON tok.model_id = r.model_id AND tok.token = rt.token;
COMMENT ON VIEW gptsql.residual_norms IS
    'How long the residual stream is (its L2 norm) after each half of each block, per place; the vectors are in gptsql.residual.';
COMMENT ON COLUMN gptsql.residual_norms.run IS 'Id of the run (gptsql.runs.run); only recorded runs have rows.';
COMMENT ON COLUMN gptsql.residual_norms.block IS 'Transformer block, from 0 to n_layer - 1.';
COMMENT ON COLUMN gptsql.residual_norms.place IS 'Place in the context.';
COMMENT ON COLUMN gptsql.residual_norms.piece IS 'The token at that place.';
COMMENT ON COLUMN gptsql.residual_norms.norm_after_attention IS 'L2 norm of h + attention(ln_1(h)): the stream after the block''s attention.';
COMMENT ON COLUMN gptsql.residual_norms.norm_after_mlp IS 'L2 norm of a + mlp(ln_2(a)): the stream the block hands to the next one.';

----------------------------------------------------------------------------------- token_embeddings
CREATE VIEW gptsql.token_embeddings AS
SELECT  m.name AS model, wte.token, tok.piece, coalesce(wte.w, wte.h::vector) AS embedding
FROM    gptsql.wte
JOIN    gptsql.model m ON m.id = wte.model_id
JOIN    gptsql.token tok ON tok.model_id = wte.model_id AND tok.token = wte.token;
COMMENT ON VIEW gptsql.token_embeddings IS
    'The token embedding matrix (wte), one row per token; compare rows with pgvector: <=> is the cosine distance.';
COMMENT ON COLUMN gptsql.token_embeddings.model IS 'Name of the model.';
COMMENT ON COLUMN gptsql.token_embeddings.token IS 'Token id.';
COMMENT ON COLUMN gptsql.token_embeddings.piece IS 'The token''s text.';
COMMENT ON COLUMN gptsql.token_embeddings.embedding IS 'Its n_embd-wide embedding: the model''s input for the token, and (tied) its output direction for logits.';

-------------------------------------------------------------------------------------------- logit_lens
-- What the model would say after block B: each block's output at a place goes through the final
-- layer norm and the token embeddings, as if the blocks after it were not there. The last block's
-- answer is the model's own prediction. One vocabulary scan per (block, place): on GPT-2 124M,
-- ask for one place (at_place) rather than the whole run.
CREATE FUNCTION gptsql.logit_lens(run bigint, top_n int DEFAULT 1, at_place int DEFAULT NULL)
RETURNS TABLE (block int, place int, piece text, rank int, token int, predicted_piece text,
               probability float8, logit float8, is_next boolean)
LANGUAGE sql STABLE AS $$
    WITH config AS (
            SELECT  r.id AS run_id, m.id AS model_id, m.layer_norm_epsilon, ln_f.gamma, ln_f.beta
            FROM    gptsql.run r
            JOIN    gptsql.model m ON m.id = r.model_id
            JOIN    gptsql.norm ln_f ON ln_f.model_id = m.id AND ln_f.name = 'ln_f'
            WHERE   r.id = logit_lens.run
    ), normed AS MATERIALIZED (         -- ln_f once per (block, place), before the vocabulary scans
            SELECT  res.block, res.place,
                    gptsql.layer_norm(res.after_mlp, config.gamma, config.beta, config.layer_norm_epsilon) AS x
            FROM    config
            JOIN    gptsql.residual res ON res.run_id = config.run_id
            WHERE   res.place = at_place OR at_place IS NULL
    ), lens AS (                        -- the softmax over the whole vocabulary, best top_n kept
            SELECT  normed.block, normed.place, d.rank, d.token, d.probability, d.logit
            FROM    config
            CROSS JOIN normed
            CROSS JOIN LATERAL gptsql.distribution(config.model_id, normed.x, top_n) d
    )
    SELECT  lens.block, lens.place, here_tok.piece, lens.rank, lens.token, said.piece,
            lens.probability, lens.logit, coalesce(lens.token = next.token, false)
    FROM    config
    CROSS JOIN lens
    JOIN    gptsql.token said ON said.model_id = config.model_id AND said.token = lens.token
    LEFT JOIN gptsql.run_token here ON here.run_id = config.run_id AND here.place = lens.place
    LEFT JOIN gptsql.token here_tok ON here_tok.model_id = config.model_id AND here_tok.token = here.token
    LEFT JOIN gptsql.run_token next ON next.run_id = config.run_id AND next.place = lens.place + 1
    ORDER BY lens.block, lens.place, lens.rank
$$;
COMMENT ON FUNCTION gptsql.logit_lens(bigint, int, int) IS
    'Logit lens of a recorded run: per block and place, the top_n tokens the model would predict if it stopped after that block '
    '(after_mlp through ln_f and the token embeddings). Columns: block, place, piece (the token read there), rank, token, '
    'predicted_piece, probability (softmax over the whole vocabulary), logit, is_next (the run''s actual next token). '
    'at_place limits it to one place.';

------------------------------------------------------------------- the engine's tables, documented
COMMENT ON TABLE gptsql.run IS 'One row per generation or prediction (read it through the view gptsql.runs).';
COMMENT ON COLUMN gptsql.run.record IS 'Keep activations: residual, attention_row and step_logit rows (false: --no-record).';
COMMENT ON COLUMN gptsql.run.backend_pid IS 'The server process that runs it: a running run whose process is gone was cut off.';
COMMENT ON TABLE gptsql.run_token IS 'The tokens of each run by place (read it through gptsql.run_tokens).';
COMMENT ON TABLE gptsql.residual IS 'Recorded runs: the residual stream per block and place, after the attention and after the MLP (norms in gptsql.residual_norms; through ln_f in gptsql.logit_lens).';
COMMENT ON COLUMN gptsql.residual.after_attention IS 'h + attention(ln_1(h)), n_embd wide.';
COMMENT ON COLUMN gptsql.residual.after_mlp IS 'a + mlp(ln_2(a)): the block''s output, n_embd wide.';
COMMENT ON TABLE gptsql.attention_row IS 'Recorded runs: one row of attention weights per block, head and query place (unnested in gptsql.attention_weights).';
COMMENT ON TABLE gptsql.step_logit IS 'Recorded runs: the ten best next-token candidates of each step (read it through gptsql.step_candidates).';
COMMENT ON TABLE gptsql.kv_cache IS 'Queries, keys and values of the places a running run has computed, per block and head; emptied when the run finishes.';
COMMENT ON TABLE gptsql.kv_chunk IS 'The KV cache again, a chunk of C = gptsql.chunk_places(head_dim) places a row (keys side by side, values dimension-major), for long contexts; emptied when the run finishes.';
