"""Long prompts: a 1000-token prompt on a narrow model with GPT-2's whole context window (1024),
fed in one statement (gptsql.step) and in chunks as the driver feeds it (gptsql.feed per
PREFILL_CHUNK places, then step), against transformers' logits and attention, and the two runs'
records against each other."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import psycopg
import pytest
import torch

from gptsql.driver.generation import Generation
from gptsql.driver.shares import start_generation
from gptsql.server.db import wait_for

MODEL = "hf-long"
N_PROMPT = 1000
CHUNK = Generation.PREFILL_CHUNK


@pytest.fixture(scope="module")
def hf_long(tmp_path_factory, run_cli):
    from helpers import make_hf_model

    directory = tmp_path_factory.mktemp("hf-long")
    model = make_hf_model(directory, n_ctx=1024, seed=3)
    run_cli("load", str(directory), "--name", MODEL, "--dtype", "float32")
    return model


WORDS = "the cat sat on a mat and then it ran far away from home to see an old friend who".split()


@pytest.fixture(scope="module")
def text():
    """N_PROMPT words that are one token each, so the text is N_PROMPT tokens."""
    return " ".join(np.random.default_rng(11).choice(WORDS, N_PROMPT))


@pytest.fixture(scope="module")
def prompt(db, hf_long, text):
    tokens = db.execute("select gptsql.tokenize(%s, %s)", [text, MODEL]).fetchone()[0]
    assert len(tokens) == N_PROMPT
    return tokens


@pytest.fixture(scope="module")
def expected(hf_long, prompt):
    """transformers' logits at every place and attention probabilities of every block and head."""
    hf_long.config._attn_implementation = "eager"  # sdpa returns no attention probabilities
    with torch.no_grad():
        out = hf_long(torch.tensor([prompt]), output_attentions=True)
    return out.logits[0].double().numpy(), [a[0].double().numpy() for a in out.attentions]


@pytest.fixture(scope="module")
def runs(database, db, text, prompt):
    """(run id, chosen token, prefill progress reported) of the prompt in one step(), through the
    driver, which feeds it in chunks, and over two workers (each attending its heads, chunked
    keys and values included)."""
    run_id = db.execute("select run_id from gptsql.start_run(%s, '', 1)", [MODEL]).fetchone()[0]
    token = db.execute("select token from gptsql.step(%s, %s, 0)", [run_id, prompt]).fetchone()[0]
    chunk_rows = db.execute("select count(*) from gptsql.kv_chunk where run_id = %s", [run_id]).fetchone()[0]
    db.execute("select gptsql.finish_run(%s)", [run_id])
    gen = Generation(db, MODEL, text, 1)
    assert gen.prompt_tokens == prompt
    seen = []
    gen.on_prefill = lambda done, total: seen.append((done, total))
    for _ in gen.steps():
        pass
    sharded = start_generation(database, db, 2, MODEL, text, 1)
    for _ in sharded.steps():
        pass
    return {"one": (run_id, token, None), "chunks": (gen.run_id, gen.tokens[0], seen),
            "workers": (sharded.run_id, sharded.tokens[0], None), "chunk_rows": chunk_rows}


def test_long_contexts_read_keys_and_values_a_chunk_at_a_time(db, hf_long, runs):
    """The 1000 places were attended through kv_chunk rows (whole chunks of C places per block and
    head), which finish_run removes with the KV cache."""
    head_dim, n_layer, n_head = db.execute("select n_embd / n_head, n_layer, n_head from gptsql.model where name = %s",
                                           [MODEL]).fetchone()
    c = db.execute("select gptsql.chunk_places(%s)", [head_dim]).fetchone()[0]
    assert c > 1 and runs["chunk_rows"] == n_layer * n_head * (N_PROMPT // c)
    for how in ("one", "chunks", "workers"):
        assert db.execute("select count(*) from gptsql.kv_chunk where run_id = %s", [runs[how][0]]).fetchone()[0] == 0


@pytest.mark.parametrize("how", ["one", "chunks", "workers"])
def test_logits_match_transformers_at_1000_tokens(db, runs, expected, how):
    logits, _ = expected
    run_id, token, _ = runs[how]
    rows = db.execute("select place, token, logit from gptsql.step_logit where run_id = %s", [run_id]).fetchall()
    assert len(rows) == 10 and {place for place, _, _ in rows} == {N_PROMPT - 1}
    for place, t, logit in rows:
        assert abs(logit - logits[place, t]) <= 1e-3
    assert token == int(logits[N_PROMPT - 1].argmax())


@pytest.mark.parametrize("how", ["one", "chunks", "workers"])
def test_attention_weights_match_transformers(db, runs, expected, how):
    """The recorded attention of every block and head at a few places, the last one included."""
    _, attentions = expected
    run_id, _, _ = runs[how]
    places = [0, CHUNK - 1, CHUNK, 15 * CHUNK - 1, 15 * CHUNK, N_PROMPT - 1]
    rows = db.execute("""select block, head, place, weights from gptsql.attention_row
                         where run_id = %s and place = any(%s)""", [run_id, places]).fetchall()
    assert len(rows) == len(attentions) * attentions[0].shape[0] * len(places)
    for block, head, place, weights in rows:
        want = attentions[block][head, place, :place + 1]
        assert len(weights) == place + 1
        assert np.abs(np.asarray(weights) - want).max() <= 1e-5


def test_chunks_record_what_one_statement_records(db, runs):
    one, chunks = runs["one"][0], runs["chunks"][0]
    assert N_PROMPT > 2 * CHUNK
    assert runs["one"][1] == runs["chunks"][1]
    q = "select count(*) from gptsql.residual where run_id = %s"
    assert db.execute(q, [one]).fetchone()[0] == db.execute(q, [chunks]).fetchone()[0] == 2 * N_PROMPT
    diff = db.execute("""select max(greatest(l2_distance(a.after_attention, b.after_attention),
                                             l2_distance(a.after_mlp, b.after_mlp)))
                         from gptsql.residual a join gptsql.residual b using (block, place)
                         where a.run_id = %s and b.run_id = %s""", [one, chunks]).fetchone()[0]
    assert diff <= 1e-4


def test_the_driver_reports_progress_after_each_chunk(runs):
    assert runs["chunks"][2] == [(n, N_PROMPT) for n in range(CHUNK, N_PROMPT, CHUNK)] + [(N_PROMPT, N_PROMPT)]


def test_predict_feeds_a_long_prompt_in_chunks(db, tiny, monkeypatch):
    """The CLI's predict: the prompt fed in chunks, then gptsql.predict_run; the same distribution
    and recorded run as gptsql.predict in one statement."""
    monkeypatch.setattr(Generation, "PREFILL_CHUNK", 4)
    text = "Happy New Year! I wish you a happy New"
    want = db.execute("select * from gptsql.predict(%s, 5, %s)", [text, tiny]).fetchall()
    gen = Generation(db, tiny, text, 0, kind="predict")
    seen = []
    gen.on_prefill = lambda done, total: seen.append(done)
    got = gen.predict(5)
    assert len(gen.prompt_tokens) > 8 and seen[:2] == [4, 8] and seen[-1] == len(gen.prompt_tokens)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    assert max(abs(a[4] - b[4]) for a, b in zip(got, want)) <= 1e-4
    assert db.execute("select kind, status from gptsql.run where id = %s", [gen.run_id]).fetchone() == ("predict", "done")


def test_feed_refuses_a_wrong_start(db, tiny):
    run_id = db.execute("select run_id from gptsql.start_run(%s, 'Hello', 1)", [tiny]).fetchone()[0]
    with pytest.raises(psycopg.errors.RaiseException) as err:
        db.execute("select gptsql.feed(%s, %s, 3)", [run_id, [1, 2]])
    assert err.value.diag.message_primary == f"run {run_id} has computed 0 places, so its next step starts at place 0, not 3"
    assert err.value.diag.message_hint.startswith("start = how many tokens the run was fed")
    db.execute("select gptsql.finish_run(%s)", [run_id])


def test_ctrl_c_during_a_long_prefill(database, backend, db, hf_long, text):
    """SIGINT while the prompt is being fed: exit 130 with one line, the run marked interrupted and
    its KV cache emptied. A lock on the KV cache, taken before the command starts and given back one
    statement at a time, lets the first chunk in and holds the second (events, whatever the
    machine's speed) until the signal has cancelled it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")} | backend[1]
    lock = "lock gptsql.kv_cache in exclusive mode"
    holder = database.connect(autocommit=False)
    held_up = lambda: [q for (q,) in db.execute("select query from pg_stat_activity "  # noqa: E731
                                                "where %s = any(pg_blocking_pids(pid))", [holder.info.backend_pid])]
    try:
        holder.execute("set lock_timeout = '120s'")
        holder.execute(lock)
        proc = subprocess.Popen([sys.executable, "-m", "gptsql", "generate", "-m", MODEL, "-n", "2", "--workers",
                                 "1", text], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        while True:     # what waits goes on, one statement at a time, until a chunk is in and a feed waits
            assert wait_for(lambda: proc.poll() is not None or held_up(), 60), "nothing reached the lock"
            assert proc.poll() is None, proc.stderr.read()
            fed = db.execute("""select r.id from gptsql.run r join gptsql.model m on m.id = r.model_id
                                where m.name = %s and r.kind = 'generate' and r.status = 'running'
                                  and exists (select from gptsql.kv_cache k where k.run_id = r.id)""",
                             [MODEL]).fetchone()
            if fed and any("gptsql.feed" in q for q in held_up()):
                break
            holder.commit()
            holder.execute(lock)          # waits for the statement that was waiting to end
        run_id = fed[0]
        proc.send_signal(signal.SIGINT)
        # the cancelled feed gives way to finish_run, which empties the cache: let it
        assert wait_for(lambda: proc.poll() is not None or not any("gptsql.feed" in q for q in held_up()), 60)
    finally:
        holder.close()
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == f"interrupted after 0 tokens (run {run_id})"
    assert db.execute("select status from gptsql.run where id = %s", [run_id]).fetchone()[0] == "interrupted"
    assert db.execute("select count(*) from gptsql.kv_cache where run_id = %s", [run_id]).fetchone()[0] == 0
