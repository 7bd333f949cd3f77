"""The model over many texts (sql/12_batch.sql, driver/batch.py): prompts completed together with
each run's tokens what it chooses alone (greedy and seeded sampling, prompts of different lengths),
a table's column completed, a generation streamed row by row through a cursor, texts scored against
transformers' log-probabilities, and the CLI's --batch and score with one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import make_hf_llama

MODEL, LLAMA = "batch-gpt2", "batch-llama"
PROMPTS = ["Happy New Year! I wish", "Once upon a time", "SELECT * FROM", "The capital of France is a city where"]


@pytest.fixture(scope="module")
def models(hf_tiny, tmp_path_factory, run_cli):
    directory = tmp_path_factory.mktemp("batch-llama")
    llama, _ = make_hf_llama(directory, seed=5)
    run_cli("load", str(hf_tiny[0]), "--name", MODEL)
    run_cli("load", str(directory), "--name", LLAMA)
    return {MODEL: hf_tiny[1], LLAMA: llama}


def alone(conn, prompt, n, model=MODEL, **sampling):
    return conn.execute("select gptsql.generate(%s, %s, %s, %s, %s, %s, %s)",
                        [prompt, n, sampling.get("temperature", 0), sampling.get("top_k", 0), sampling.get("top_p", 1),
                         sampling.get("seed"), model]).fetchone()[0]


@pytest.mark.parametrize("sampling", [{}, dict(temperature=0.9, seed=7), dict(temperature=1.2, seed=3, top_k=40)],
                         ids=["greedy", "seeded", "top_k"])
@pytest.mark.parametrize("shares", ["1", "2"])
def test_completions_are_each_run_alone(conn, models, sampling, shares):
    conn.execute("select set_config('gptsql.shares', %s, false)", [shares])
    for model in (MODEL, LLAMA):
        rows = conn.execute("select n, run, completion from gptsql.complete(%s, 6, %s, %s, %s, %s, %s)",
                            [PROMPTS, sampling.get("temperature", 0), sampling.get("top_k", 0),
                             sampling.get("top_p", 1), sampling.get("seed"), model]).fetchall()
        assert [n for n, _, _ in rows] == [1, 2, 3, 4]
        assert [c for _, _, c in rows] == [alone(conn, p, 6, model, **sampling) for p in PROMPTS]
        statuses = conn.execute("select array_agg(status) from gptsql.run where id = any(%s)",
                                [[r for _, r, _ in rows]]).fetchone()[0]
        assert statuses == ["done"] * 4


def test_greedy_runs_of_a_batch_record_what_they_record_alone(conn, models):
    """Several greedy runs choose from one pass over the vocabulary: each run's recorded best tokens
    and probabilities are those of its run alone."""
    def recorded(run):
        return conn.execute("select array_agg(token order by place, rank), array_agg(probability order by place, rank) "
                            "from gptsql.step_logit where run_id = %s", [run]).fetchone()

    conn.execute("select set_config('gptsql.shares', '2', false)")
    batch = [r for _, r, _ in conn.execute("select n, run, completion from gptsql.complete(%s, 3, model => %s, record => true)",
                                           [PROMPTS, MODEL]).fetchall()]
    for run, prompt in zip(batch, PROMPTS):
        alone(conn, prompt, 3)
        single = conn.execute("select max(id) from gptsql.run").fetchone()[0]
        (tokens, probabilities), (want_tokens, want_probabilities) = recorded(run), recorded(single)
        assert tokens == want_tokens and len(tokens) == 30
        assert np.allclose(probabilities, want_probabilities, rtol=1e-9, atol=0)


def test_a_batch_stops_each_run_at_its_own_end(conn, models):
    """Runs of one batch with their own max_tokens: each stops at its own, the others go on."""
    runs = [conn.execute("select run_id from gptsql.start_run(%s, %s, %s)", [MODEL, p, n]).fetchone()[0]
            for p, n in zip(PROMPTS, (1, 4, 0, 7))]
    got = dict(conn.execute("select run, completion from gptsql.generate_runs(%s)", [runs]).fetchall())
    assert [got[r] for r in runs] == [alone(conn, p, n) for p, n in zip(PROMPTS, (1, 4, 0, 7))]
    counts = [conn.execute("select count(*) from gptsql.run_token where run_id = %s and not is_prompt",
                           [r]).fetchone()[0] for r in runs]
    assert counts == [1, 4, 0, 7]


def test_a_table_column_is_completed(conn, models):
    conn.execute("drop table if exists public.batch_reviews")
    conn.execute("create table public.batch_reviews (id int, body text, summary text)")
    conn.execute("insert into public.batch_reviews select n, p, null from unnest(%s::text[]) with ordinality as t(p, n)",
                 [PROMPTS])
    conn.execute("update public.batch_reviews set summary = 'kept' where id = 3")
    try:
        done = conn.execute("select gptsql.complete_column('public.batch_reviews', 'body', 'summary', 5, "
                            "model => %s, batch_size => 2)", [MODEL]).fetchone()[0]
        assert done == 3
        rows = conn.execute("select body, summary from public.batch_reviews order by id").fetchall()
        assert rows == [(p, "kept" if i == 2 else alone(conn, p, 5)) for i, p in enumerate(PROMPTS)]
    finally:
        conn.execute("drop table public.batch_reviews")


def test_a_stream_gives_each_token_as_it_is_chosen(database, models):
    """Through a cursor (psql's FETCH_COUNT), the first row comes while the run has more to do; the
    rows put together are the generation's text, and the run ends done."""
    conn = database.connect(autocommit=False)
    try:
        conn.execute("declare s no scroll cursor for select gptsql.stream(%s, 8, model => %s)", [PROMPTS[0], MODEL])
        first = conn.execute("fetch 1 from s").fetchone()[0]
        run = conn.execute("select max(id) from gptsql.run").fetchone()[0]
        made = conn.execute("select count(*) from gptsql.run_token where run_id = %s and not is_prompt",
                            [run]).fetchone()[0]
        assert made < 8, "the whole generation ran before the first row"
        rest = [r[0] for r in conn.execute("fetch all from s").fetchall()]
        conn.execute("close s")
        conn.commit()
        assert first + "".join(rest) == alone(conn, PROMPTS[0], 8)
        assert conn.execute("select status from gptsql.run where id = %s", [run]).fetchone()[0] == "done"
    finally:
        conn.close()


def torch_logprobs(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(tokens[1:])[:, None])[:, 0].numpy()


@pytest.mark.parametrize("shares", ["1", "2"])
def test_scores_are_transformers_log_probabilities(conn, models, shares):
    conn.execute("select set_config('gptsql.shares', %s, false)", [shares])
    texts = PROMPTS + ["x"]
    for model in (MODEL, LLAMA):
        rows = conn.execute("select n, tokens, logprob, perplexity, token_logprobs from gptsql.score(%s, %s)",
                            [texts, model]).fetchall()
        assert [r[0] for r in rows] == list(range(1, len(texts) + 1))
        for (n, count, logprob, perplexity, per_token), text in zip(rows, texts):
            tokens = conn.execute("select gptsql.tokenize(%s, %s)", [text, model]).fetchone()[0]
            assert count == len(tokens)
            want = torch_logprobs(models[model], tokens)
            assert len(per_token) == len(want) and np.abs(np.array(per_token) - want).max(initial=0) <= 1e-3
            assert abs(logprob - want.sum()) <= 1e-3 * max(len(want), 1)
            if len(want):
                assert abs(perplexity - np.exp(-want.mean())) <= 1e-3 * perplexity
            else:
                assert perplexity is None and logprob == 0


def test_cli_batch_is_one_json_line_per_prompt(run_cli, conn, models):
    lines = [json.dumps(PROMPTS[0]), json.dumps({"prompt": PROMPTS[1], "max_tokens": 3}),
             json.dumps({"prompt": PROMPTS[2], "temperature": 0.9, "seed": 5})]
    out = run_cli("generate", "--batch", "-", "-m", MODEL, "-n", "6", "-t", "0", "--batch-size", "2",
                  input="\n".join(lines) + "\n").stdout
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["line"] for g in got] == [1, 2, 3]
    assert [g["completion"] for g in got] == [alone(conn, PROMPTS[0], 6), alone(conn, PROMPTS[1], 3),
                                              alone(conn, PROMPTS[2], 6, temperature=0.9, seed=5)]
    assert [g["tokens"] for g in got] == [6, 3, 6]


@pytest.mark.parametrize("line, said", [
    ("not json", "line 1 is not JSON"),
    ('{"text": "hi"}', 'line 1 has no "prompt" text'),
    ('{"prompt": "hi", "colour": 1}', "line 1 has colour, which is not a setting"),
    ('{"prompt": "hi", "max_tokens": "five"}', "line 1: max_tokens is 'five', not a number"),
])
def test_cli_batch_errors_are_one_line(run_cli, models, line, said):
    result = run_cli("generate", "--batch", "-", "-m", MODEL, input=line + "\n", check=False)
    assert result.returncode == 1 and result.stderr.startswith(f"Error: {said}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_score(run_cli, conn, models):
    out = run_cli("score", "-m", MODEL, "--json", PROMPTS[0], PROMPTS[1]).stdout
    got = [json.loads(line) for line in out.splitlines()]
    want = conn.execute("select logprob, perplexity from gptsql.score(%s, %s) order by n",
                        [PROMPTS[:2], MODEL]).fetchall()
    assert [v for g in got for v in (g["logprob"], g["perplexity"])] == pytest.approx([v for row in want for v in row])
    table = run_cli("score", "-m", MODEL, "-", input=PROMPTS[0] + "\n").stdout
    assert table.split("\t")[-1].strip() == PROMPTS[0]
