"""What a run records is the model's own numbers: run_tokens.probability / logit / rank and every
column of step_candidates against a numpy softmax over transformers' logits, for greedy and
sampled runs (a temperature other than 1, top-k, top-p), on one backend and over two workers, and
the next-token table of predict."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gptsql.driver.shares import start_generation

MODEL = "hf-recorded"
PROMPT = "Happy New Year! I wish"
N_NEW = 6
TOP = 10                                  # candidates a step records

RUNS = {                                  # sampling of each run: the recorded values must not depend on it
    "greedy": dict(temperature=0.0),
    "T=0.7": dict(temperature=0.7, seed=11),
    "T=1.6, top-k 5": dict(temperature=1.6, top_k=5, seed=12),
    "T=1.3, top-p 0.8": dict(temperature=1.3, top_p=0.8, seed=13),
}


@pytest.fixture(scope="module")
def hf_model(hf_tiny, run_cli):
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", MODEL, "--dtype", "float32", "--replace")
    return model


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy().astype(np.float64)


def ranked(logits: np.ndarray) -> np.ndarray:
    """Token ids most probable first, ties to the lower id (the engine's order)."""
    return np.lexsort((np.arange(len(logits)), -logits))


def rows(db, query, params):
    cur = db.execute(query, params)
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def close(got, want, what):
    assert got is not None and np.isclose(got, want, rtol=2e-3, atol=1e-7), f"{what}: recorded {got}, softmax {want}"


def generate(database, db, workers, sampling):
    gen = start_generation(database, db, workers, MODEL, PROMPT, N_NEW, record=True, **sampling)
    for _ in gen.steps():
        pass
    return gen.run_id, list(gen.prompt_tokens), list(gen.tokens)


def pieces(db, tokens):
    found = dict(db.execute("select token, piece from gptsql.token where model_id = gptsql.model_id(%s) "
                            "and token = any(%s)", [MODEL, list(tokens)]).fetchall())
    return [found[t] for t in tokens]


@pytest.mark.parametrize("workers", [1, 2], ids=["one backend", "two workers"])
@pytest.mark.parametrize("name", list(RUNS))
def test_recorded_values_are_the_softmax_of_transformers_logits(database, db, hf_model, name, workers):
    run_id, prompt, generated = generate(database, db, workers, RUNS[name])
    assert len(generated) == N_NEW
    read = prompt + generated[:-1]                     # the last token is chosen, never read back
    logits = torch_logits(hf_model, read)[len(prompt) - 1:]   # one row per step
    probability = softmax(logits)

    # run_tokens: the prompt without numbers, then each choice with its probability, logit and rank.
    tokens = rows(db, "select * from gptsql.run_tokens where run = %s order by place", [run_id])
    assert [t["token"] for t in tokens] == prompt + generated
    assert [t["piece"] for t in tokens] == pieces(db, prompt + generated)
    for t in tokens[:len(prompt)]:
        assert t["is_prompt"] and t["probability"] is None and t["logit"] is None and t["rank"] is None
    for step, t in enumerate(tokens[len(prompt):]):
        assert not t["is_prompt"] and t["place"] == len(prompt) + step
        close(t["probability"], probability[step, t["token"]], f"step {step + 1} probability")
        assert abs(t["logit"] - logits[step, t["token"]]) <= 1e-3
        rank = int(np.flatnonzero(ranked(logits[step]) == t["token"])[0]) + 1
        assert t["rank"] == (rank if rank <= TOP else None), f"step {step + 1}"
        if RUNS[name]["temperature"] == 0:
            assert rank == 1
        if RUNS[name].get("top_k"):
            assert rank <= RUNS[name]["top_k"]

    # step_candidates: every column of the ten best of every step.
    candidates = rows(db, "select * from gptsql.step_candidates where run = %s order by step, rank", [run_id])
    assert len(candidates) == TOP * N_NEW
    for step in range(N_NEW):
        best = ranked(logits[step])[:TOP]
        mine = candidates[step * TOP:(step + 1) * TOP]
        place = len(prompt) + step
        assert [c["step"] for c in mine] == [step + 1] * TOP
        assert [c["place"] for c in mine] == [place] * TOP
        assert [c["after_piece"] for c in mine] == pieces(db, [read[place - 1]]) * TOP
        assert [c["rank"] for c in mine] == list(range(1, TOP + 1))
        assert [c["token"] for c in mine] == best.tolist(), f"step {step + 1}"
        assert [c["piece"] for c in mine] == pieces(db, best.tolist())
        for c in mine:
            close(c["probability"], probability[step, c["token"]], f"step {step + 1} rank {c['rank']} probability")
            assert abs(c["logit"] - logits[step, c["token"]]) <= 1e-3
        assert [c["chosen"] for c in mine] == [int(t) == generated[step] for t in best]


def test_predict_is_the_softmax_of_transformers_logits(db, run_cli, hf_model):
    prompt_tokens = db.execute("select gptsql.tokenize(%s, %s)", [PROMPT, MODEL]).fetchone()[0]
    logits = torch_logits(hf_model, prompt_tokens)[-1]
    probability = softmax(logits)
    best = ranked(logits)[:5]
    table = db.execute("select * from gptsql.predict(%s, 5, %s)", [PROMPT, MODEL]).fetchall()
    assert [(r[0], r[1], r[2]) for r in table] == list(zip(range(1, 6), best.tolist(), pieces(db, best.tolist())))
    for rank, token, _piece, p, logit in table:
        close(p, probability[token], f"rank {rank} probability")
        assert abs(logit - logits[token]) <= 1e-3
    # ... and what the prediction recorded, read back through step_candidates.
    run_id = db.execute("select gptsql.latest_run('predict')").fetchone()[0]
    recorded = db.execute("select rank, token, probability, logit, step, place from gptsql.step_candidates "
                          "where run = %s order by rank", [run_id]).fetchall()
    assert [r[:4] for r in recorded] == [(r[0], r[1], r[3], r[4]) for r in table]
    assert {(r[4], r[5]) for r in recorded} == {(1, len(prompt_tokens))}
