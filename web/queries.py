"""The SQL behind every panel of the explorer: one read-only query each, with bound parameters.

Each panel shows its query with the parameters filled in (psycopg's own quoting, ClientCursor.mogrify),
so what the page shows is what `gptsql db psql` returns for the pasted text. Everything reads the
views of sql/09_runs.sql and the functions of sql/11_explore.sql (one place of a run, stage by
stage); the queries are written like the engine's: one CTE per step.
"""
from __future__ import annotations

import datetime
import decimal
import math

import psycopg

RUNS = """\
SELECT  run, model, kind, status, prompt, generated_text, prompt_tokens, generated_tokens,
        temperature, top_k, top_p, seed, recorded, started_at, round(total_ms::numeric, 1) AS total_ms
FROM    gptsql.runs
ORDER BY run DESC
LIMIT   %(limit)s"""

RUN = """\
SELECT  run, model, kind, status, error, prompt, generated_text, prompt_tokens, generated_tokens,
        max_tokens, temperature, top_k, top_p, seed, recorded, started_at, total_ms
FROM    gptsql.runs
WHERE   run = %(run)s"""

RUN_TOKENS = """\
SELECT  place, token, piece, is_prompt, probability, rank
FROM    gptsql.run_tokens
WHERE   run = %(run)s
ORDER BY place"""

# The temperature slider: the step's ten recorded logits through a softmax at temperature T. Only
# the ten best are kept per step (gptsql.step_logit), so the distribution is over those ten,
# renormalised; at T = 1 it keeps their order and ratios (probability is over the whole vocabulary).
STEP = """\
WITH candidates AS (            -- the step's ten best, as the run recorded them
        SELECT  rank, token, piece, after_piece, place, logit, probability, chosen
        FROM    gptsql.step_candidates
        WHERE   run = %(run)s AND step = %(step)s
), scaled AS (                  -- logits over the temperature; 0 is greedy
        SELECT  c.*, c.logit / nullif(%(temperature)s::float8, 0) AS z
        FROM    candidates c
), peak AS (                    -- the largest, subtracted before exp() so nothing overflows
        SELECT  s.*, max(s.z) OVER () AS z_max
        FROM    scaled s
), reshaped AS (                -- softmax over the ten at temperature T (greedy: all on rank 1)
        SELECT  p.*,
                CASE WHEN p.z IS NULL THEN (p.rank = 1)::int::float8
                     ELSE exp(p.z - p.z_max) / sum(exp(p.z - p.z_max)) OVER () END AS p_at_temperature
        FROM    peak p
)
SELECT  rank, token, piece, after_piece, place, round(logit::numeric, 4) AS logit,
        round(probability::numeric, 4) AS probability,
        round(p_at_temperature::numeric, 4) AS p_at_temperature, chosen
FROM    reshaped
ORDER BY rank"""

# All heads of a block (of every block when block is NULL), small: each map cut into squares of
# `width` places a side (at most `pixels` squares across), a square showing its strongest weight, so
# a sharp look stays visible. The page asks for one block at a time and draws each as it comes.
ATTENTION_GRID = """\
SELECT  block, head, query_square, gptsql.rounded(weights, 3) AS weights
FROM    gptsql.explore_attention_grid(%(run)s, %(block)s, %(pixels)s)
ORDER BY block, head, query_square"""

ATTENTION_HEAD = """\
SELECT  a.place AS query_place, tok.piece AS query_piece, gptsql.rounded(a.weights, 4) AS weights
FROM    gptsql.attention_row a
JOIN    gptsql.run r ON r.id = a.run_id
JOIN    gptsql.run_token rt ON rt.run_id = a.run_id AND rt.place = a.place
JOIN    gptsql.token tok ON tok.model_id = r.model_id AND tok.token = rt.token
WHERE   a.run_id = %(run)s AND a.block = %(block)s AND a.head = %(head)s
ORDER BY a.place"""

# One vocabulary scan per block and place (sql/11_explore.sql's explore_top_tokens): a window of
# places, asked for a block at a time.
LOGIT_LENS = """\
SELECT  block, place, piece, predicted_piece, round(probability::numeric, 4) AS probability, is_next,
        token
FROM    gptsql.explore_lens(%(run)s, %(first)s, %(last)s, %(first_block)s, %(last_block)s)
ORDER BY block, place"""

RESIDUAL_NORMS = """\
SELECT  block, place, piece, round(norm_after_attention::numeric, 3) AS norm_after_attention,
        round(norm_after_mlp::numeric, 3) AS norm_after_mlp
FROM    gptsql.residual_norms
WHERE   run = %(run)s
ORDER BY block, place"""

MODELS = """\
SELECT  s.name, s.source, m.family, s.n_layer, s.n_embd, s.n_head, m.n_kv_head, m.n_inner, s.n_ctx, s.n_vocab,
        s.n_params, s.bytes, s.loaded_at
FROM    gptsql.model_size s
JOIN    gptsql.model m ON m.name = s.name
ORDER BY s.loaded_at DESC"""

# Parameters counted from the stored rows: how many rows each part has (an index-only count) times
# the width of one of them, plus a linear layer's biases, kept once per output unit (on part 0);
# per block too (the blocks a part is in), and all parts together on every row.
# A linear layer's row is one output unit's weights, cut in parts of n_embd (sql/00_schema.sql).
MODEL_PARTS = """\
WITH model AS (
        SELECT  gptsql.model_id(%(model)s) AS id
), embeddings AS (              -- wte: one row per token; wpe: one per place
        SELECT  'wte' AS part, count(*) AS rows, 1 AS blocks,
                count(*) * (SELECT coalesce(vector_dims(w), vector_dims(h)) FROM gptsql.wte x
                            WHERE x.model_id = model.id LIMIT 1) AS parameters
        FROM    model JOIN gptsql.wte ON wte.model_id = model.id
        GROUP BY model.id
        UNION ALL
        SELECT  'wpe', count(*), 1,
                count(*) * (SELECT vector_dims(w) FROM gptsql.wpe x WHERE x.model_id = model.id LIMIT 1)
        FROM    model JOIN gptsql.wpe ON wpe.model_id = model.id
        GROUP BY model.id
), norms AS (                   -- gamma and beta of every layer norm
        SELECT  norm.name AS part, count(*) AS rows, count(DISTINCT norm.block) AS blocks,
                sum(vector_dims(gamma) + vector_dims(beta)) AS parameters
        FROM    model JOIN gptsql.norm ON norm.model_id = model.id
        GROUP BY norm.name
), linears AS (                 -- weights: rows times their width; biases: one per output unit
        SELECT  linear.name AS part, count(*) AS rows, count(*) FILTER (WHERE linear.part = 0) AS biases,
                count(DISTINCT linear.block) AS blocks, min(model.id) AS model_id
        FROM    model JOIN gptsql.linear ON linear.model_id = model.id
        GROUP BY linear.name
), widths AS (                  -- (SwiGLU's gate rows carry an up row as wide)
        SELECT  l.part, l.rows, l.blocks, l.rows * one.width + l.biases AS parameters
        FROM    linears l
        CROSS JOIN LATERAL (SELECT coalesce(vector_dims(x.w), vector_dims(x.h))
                                   + coalesce(vector_dims(x.up_w), vector_dims(x.up_h), 0) AS width
                            FROM gptsql.linear x WHERE x.model_id = l.model_id AND x.name = l.part LIMIT 1) one
), every_part AS (
        SELECT  part, rows, blocks, parameters FROM embeddings
        UNION ALL
        SELECT  part, rows, blocks, parameters FROM norms
        UNION ALL
        SELECT  part, rows, blocks, parameters FROM widths
)
SELECT  part, rows, blocks, parameters, parameters / blocks AS per_block, sum(parameters) OVER () AS all_parts
FROM    every_part
ORDER BY part"""


# ------------------------------------------------------------------ inside one place of a run
# A recorded run's shape and where it can be explored: the model's family and sizes, and how many
# places went through the blocks (sql/11_explore.sql's explore_run checks the run).
INSIDE = """\
SELECT  r.run, r.model, r.kind, r.prompt, r.temperature, r.top_k, r.top_p, r.seed, c.family, c.n_layer, c.n_head,
        c.n_kv_head, c.head_dim, c.n_embd, c.n_inner, c.places
FROM    gptsql.runs r
CROSS JOIN LATERAL gptsql.explore_run(r.run, 0) AS c
WHERE   r.run = %(run)s"""

INSIDE_TOKENS = """\
SELECT  place, token, piece, bytes, is_prompt, round(probability::numeric, 4) AS probability, read
FROM    gptsql.explore_tokens(%(run)s)
ORDER BY place"""


def stage(call: str) -> str:
    """A stage function's rows (sql/11_explore.sql), numbers rounded, in the function's order."""
    return f"""\
SELECT  step, what, at_place, unit, round(value::numeric, 4) AS value, gptsql.rounded(vals, 4) AS vals
FROM    gptsql.{call} WITH ORDINALITY AS s(step, what, at_place, unit, value, vals, n)
ORDER BY n"""


EMBEDDING = stage("explore_embedding(%(run)s, %(place)s)")
NORM = stage("explore_norm(%(run)s, %(place)s, %(norm)s, %(block)s)")
HEAD = stage("explore_attention(%(run)s, %(place)s, %(block)s, %(head)s)")
PROJECTION = stage("explore_projection(%(run)s, %(place)s, %(block)s)")
MLP = stage("explore_mlp(%(run)s, %(place)s, %(block)s)")

SAMPLING = """\
SELECT  rank, token, piece, round(logit::numeric, 4) AS logit, round(probability::numeric, 4) AS probability,
        round(p_at_temperature::numeric, 4) AS p_at_temperature, round(cumulative::numeric, 4) AS cumulative,
        kept, round(p_drawn::numeric, 4) AS p_drawn, drawn, next
FROM    gptsql.explore_sampling(%(run)s, %(place)s, %(temperature)s, %(top_k)s, %(top_p)s)
ORDER BY rank"""

LENS_AT = """\
SELECT  block, rank, predicted_piece, round(probability::numeric, 4) AS probability, is_next
FROM    gptsql.explore_lens(%(run)s, %(place)s, %(place)s, %(first_block)s, %(last_block)s, 3)
ORDER BY block, rank"""


def plain(value):
    """A value as JSON can carry it (numerics as numbers, times as ISO text)."""
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None     # JSON has no NaN or infinity (the page shows a missing number as —)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


def filled(conn: psycopg.Connection, query: str, params: dict) -> str:
    """The query with its parameters as SQL literals: what to paste into psql."""
    return psycopg.ClientCursor(conn).mogrify(query, params)


def read(conn: psycopg.Connection, query: str, params: dict) -> dict:
    """Run one panel's query in a read-only transaction: its SQL (filled in), columns and rows."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        cur = conn.execute(query, params)
        columns = [c.name for c in cur.description]
        rows = [[plain(v) for v in row] for row in cur.fetchall()]
    return {"sql": filled(conn, query, params), "columns": columns, "rows": rows}
