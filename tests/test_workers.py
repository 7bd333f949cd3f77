"""One generation over several backends (driver/workers.py, sql/10_shards.sql) against one backend
and against transformers: 1, 2 and 3 workers (3 does not divide the 4 heads nor the 4 MLP groups:
uneven shares), greedy and sampled, and the recorded run (tokens, top logits, attention weights,
residual stream) the same as one backend records."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import psycopg
import pytest
import torch
from pgvector.psycopg import register_vector

from gptsql.driver.workers import start_generation, start_prediction
from gptsql.errors import UserError

PROMPT = "Happy New Year! I wish"
MODEL = "hf-workers"


@pytest.fixture(scope="module")
def hf_model(hf_tiny, run_cli, db):
    directory, model = hf_tiny
    run_cli("load", str(directory), "--name", MODEL, "--dtype", "float32")
    register_vector(db)
    return model


def generate(database, db, workers, n=6, **sampling):
    gen = start_generation(database, db, workers, MODEL, PROMPT, n, record=True, **sampling)
    tokens = [token for token, _raw, _p in gen.steps()]
    return gen.run_id, gen.prompt_tokens, tokens


def predict(database, db, workers, prompt, top_n, model):
    return start_prediction(database, db, workers, model, prompt).predict(top_n)


def recorded(db, run_id):
    """Everything a run recorded, in a fixed order."""
    q = lambda sql: db.execute(sql, [run_id]).fetchall()  # noqa: E731
    return {
        "tokens": q("select place, token, probability, logit from gptsql.run_token where run_id = %s order by place"),
        "top": q("select place, rank, token, logit, probability from gptsql.step_logit where run_id = %s "
                 "order by place, rank"),
        "attention": q("select block, head, place, weights from gptsql.attention_row where run_id = %s "
                       "order by block, head, place"),
        "residual": q("select block, place, after_attention, after_mlp from gptsql.residual where run_id = %s "
                      "order by block, place"),
    }


def assert_same_record(got, want, tol=1e-4):
    for key in want:
        assert len(got[key]) == len(want[key]) > 0, key
        for a, b in zip(got[key], want[key]):
            for x, y in zip(a, b):
                if isinstance(y, (int, str)) and not isinstance(y, bool):
                    assert x == y, key
                elif y is None:
                    assert x is None, key
                else:
                    x, y = (v.to_numpy() if hasattr(v, "to_numpy") else v for v in (x, y))
                    assert np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)).max() <= tol, key


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_match_one_backend_and_transformers(database, db, hf_model, workers):
    one_id, prompt, one_tokens = generate(database, db, 1, temperature=0)
    run_id, _, tokens = generate(database, db, workers, temperature=0)
    assert tokens == one_tokens
    assert_same_record(recorded(db, run_id), recorded(db, one_id))

    with torch.no_grad():  # every step's ten best logits and probabilities against transformers'
        logits = hf_model(torch.tensor([prompt + tokens])).logits[0].double()
    probabilities = torch.softmax(logits, -1)
    rows = db.execute("select place, token, logit, probability from gptsql.step_logit where run_id = %s",
                      [run_id]).fetchall()
    assert len(rows) == 10 * len(tokens)
    for place, token, logit, probability in rows:
        assert abs(logit - float(logits[place, token])) <= 1e-3
        assert abs(probability - float(probabilities[place, token])) <= 1e-4
    greedy = [int(logits[len(prompt) - 1 + i].argmax()) for i in range(len(tokens))]
    assert tokens == greedy


@pytest.mark.parametrize("sampling", [dict(temperature=0.9, seed=3), dict(temperature=0.9, seed=3, top_k=20),
                                      dict(temperature=1.5, seed=5, top_p=0.6),
                                      dict(temperature=3.0, seed=2, top_p=0.995)],  # past the 1000 best
                         ids=["gumbel", "top_k", "top_p", "top_p_wide"])
def test_sampling_over_split_vocabulary_draws_the_same_tokens(database, db, hf_model, sampling):
    one_id, _, one_tokens = generate(database, db, 1, n=8, **sampling)
    for workers in (2, 3):
        run_id, _, tokens = generate(database, db, workers, n=8, **sampling)
        assert tokens == one_tokens, workers
        assert_same_record(recorded(db, run_id), recorded(db, one_id))


def test_a_prompt_fed_in_chunks_over_workers(database, db, hf_model, monkeypatch):
    """The prompt in chunks of 2 places (feed over the shards, then the step or the prediction):
    the same tokens, distribution and record as one backend fed in one statement."""
    from gptsql.driver.generation import Generation

    one_id, _, one_tokens = generate(database, db, 1, temperature=0)
    one = predict(database, db, 1, PROMPT, 12, MODEL)
    one_predict = latest_run(db, "predict")
    monkeypatch.setattr(Generation, "PREFILL_CHUNK", 2)
    fed = []
    gen = start_generation(database, db, 2, MODEL, PROMPT, 6, record=True, temperature=0)
    gen.on_prefill = lambda done, total: fed.append(done)
    assert [token for token, _raw, _p in gen.steps()] == one_tokens
    assert len(fed) >= 3 and fed[-1] == len(gen.prompt_tokens)     # several chunks went through feed()
    assert_same_record(recorded(db, gen.run_id), recorded(db, one_id))

    rows = predict(database, db, 2, PROMPT, 12, MODEL)
    assert [r[:3] for r in rows] == [r[:3] for r in one]
    assert max(abs(r[3] - r1[3]) + abs(r[4] - r1[4]) for r, r1 in zip(rows, one)) <= 1e-4
    assert_same_record(recorded(db, latest_run(db, "predict")), recorded(db, one_predict))


def test_an_exchange_larger_than_the_socket_buffer(database, db, hf_model):
    """A prompt chunk of the 124M shape sends each worker ~0.4 MB of partials: more than a socket
    takes at once, which the non-blocking libpq sends in parts (the rest flushed before waiting)."""
    import threading

    from gptsql.driver.workers import Packed, Workers, register_packed

    model_id = db.execute("select id from gptsql.model where name = %s", [MODEL]).fetchone()[0]
    workers = Workers(lambda: psycopg.connect(database.dsn(), autocommit=True), 2, model_id, (50257, 4))
    try:
        register_packed(workers.conns[0])
        big = workers.conns[0].execute("select array_agg(array_fill(w::real, array[768])::vector) "
                                       "from generate_series(1, 400) w", binary=True).fetchone()[0]
        assert isinstance(big, Packed) and len(big) > 1_000_000
        answers = []
        exchange = threading.Thread(target=lambda: answers.append(workers.exchange(
            b"big_echo", b"select cardinality($1::vector[]), ($1::vector[])[400]::text", lambda w: [big])), daemon=True)
        exchange.start()
        exchange.join(120)
        assert answers, "the exchange never came back: a worker is still waiting for the rest of its query"
        assert [[int.from_bytes(n, "big"), text[:6]] for n, text in answers[0]] == [[400, b"[400,4"]] * 2   # binary results
    finally:
        workers.close()


@pytest.mark.parametrize("shares", [1, 2, 3, 4])
def test_vocabulary_shares_hold_every_token_once(db, hf_model, shares):
    """Each worker reads a range of the token embeddings' pages (vocab_pages): together they read
    every token of the vocabulary, and none twice."""
    model_id, n_vocab = db.execute("select id, n_vocab from gptsql.model where name = %s", [MODEL]).fetchone()
    hidden = db.execute("select w from gptsql.wte where model_id = %s and token = 7", [model_id]).fetchone()[0]
    held = []
    for share in range(shares):
        held += db.execute("select cand_tokens from gptsql.vocab_share(%s, %s, %s, %s, 0, 0.5, NULL)",
                           [model_id, hidden, share, shares]).fetchone()[0]
    assert sorted(held) == list(range(n_vocab))


def test_projection_shares_are_the_projection_s_columns_and_go_with_the_model(database, db, run_cli, hf_tiny, hf_model):
    """Workers multiply their heads' columns of the attention projection from rows cut once per
    model and split (gptsql.projection_share): each row is its whole row's columns of those heads
    (3 workers over 4 heads: uneven), an emptied table (as after a crash: it is unlogged) is made
    again at the next start, and unloading the model removes them."""
    directory, _ = hf_tiny
    run_cli("load", str(directory), "--name", "hf-projection", "--dtype", "float32")
    model_id, n_embd, n_head, n_layer = db.execute(
        "select id, n_embd, n_head, n_layer from gptsql.model where name = 'hf-projection'").fetchone()
    head_dim = n_embd // n_head
    start_generation(database, db, 3, "hf-projection", PROMPT, 2, record=False).stop("done")
    splits = db.execute("select head_lo, head_hi, count(*) from gptsql.projection_share where model_id = %s "
                        "group by 1, 2 order by 1", [model_id]).fetchall()
    assert splits == [(0, 1, n_layer * n_embd), (1, 2, n_layer * n_embd), (2, 4, n_layer * n_embd)]
    rows = db.execute("""select s.head_lo, s.head_hi, s.w, w.w, s.bias, w.bias from gptsql.projection_share s
                         join gptsql.linear w on w.model_id = s.model_id and w.name = 'attn_proj' and w.part = 0
                          and w.block = s.block and w.grp = s.grp and w.idx = s.idx
                         where s.model_id = %s""", [model_id]).fetchall()
    assert len(rows) == 3 * n_layer * n_embd
    for lo, hi, cut, whole, cut_bias, bias in rows:
        assert np.array_equal(cut.to_numpy(), whole.to_numpy()[lo * head_dim:hi * head_dim]) and cut_bias == bias
    _, _, want = generate(database, db, 1)
    db.execute("delete from gptsql.projection_share where model_id = %s", [model_id])
    gen = start_generation(database, db, 2, "hf-projection", PROMPT, 6, record=False)
    assert db.execute("select count(*) from gptsql.projection_share where model_id = %s",
                      [model_id]).fetchone()[0] == 2 * n_layer * n_embd
    assert [token for token, _raw, _p in gen.steps()] == want   # the same weights as MODEL's
    run_cli("unload", "hf-projection", "--yes")
    assert db.execute("select count(*) from gptsql.projection_share where model_id = %s",
                      [model_id]).fetchone()[0] == 0


def test_a_float16_model_over_workers_matches_one_backend(database, db, run_cli, hf_tiny, hf_model):
    """float16 models keep their weights (and their projection shares) as halfvec: 2 workers choose
    the same tokens with the same top logits as one backend."""
    directory, _ = hf_tiny
    run_cli("load", str(directory), "--name", "hf-workers16", "--dtype", "float16")
    runs = {}
    for workers in (1, 2):
        gen = start_generation(database, db, workers, "hf-workers16", PROMPT, 6, record=True)
        runs[workers] = ([token for token, _raw, _p in gen.steps()], recorded(db, gen.run_id)["top"])
    assert runs[2][0] == runs[1][0]
    assert_same_record({"top": runs[2][1]}, {"top": runs[1][1]}, tol=1e-3)
    run_cli("unload", "hf-workers16", "--yes")


def latest_run(db, kind):
    return db.execute("select max(id) from gptsql.run where kind = %s", [kind]).fetchone()[0]


@pytest.mark.parametrize("workers", [2, 3])
def test_predict_over_workers_records_the_same_run(database, db, hf_model, workers):
    one = predict(database, db, 1, PROMPT, 12, MODEL)
    one_id = latest_run(db, "predict")
    rows = predict(database, db, workers, PROMPT, 12, MODEL)
    run_id = latest_run(db, "predict")
    assert run_id != one_id and len(rows) == len(one) == 12
    assert [r[:3] for r in rows] == [r[:3] for r in one]            # rank, token, piece
    for (*_, p, logit), (*_, p1, logit1) in zip(rows, one):
        assert abs(p - p1) <= 1e-5 and abs(logit - logit1) <= 1e-4
    assert_same_record(recorded(db, run_id), recorded(db, one_id))

    prompt = db.execute("select array_agg(token order by place) from gptsql.run_token where run_id = %s",
                        [run_id]).fetchone()[0]
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0, -1].double()
    probabilities = torch.softmax(logits, -1)
    assert [r[1] for r in rows] == torch.topk(logits, 12).indices.tolist()
    for _rank, token, _piece, p, logit in rows:
        assert abs(logit - float(logits[token])) <= 1e-3 and abs(p - float(probabilities[token])) <= 1e-4


def test_cli_predict_trace_and_lens_over_workers_record_the_same_runs(run_cli, db, hf_model, tmp_path):
    runs = re.compile(r"\brun \d+")
    def predicted(*workers):
        lines = run_cli("predict", "-m", MODEL, "--json", *workers, PROMPT).stdout.splitlines()
        return [json.loads(line) for line in lines]

    one, rows = predicted("--workers", "1"), predicted()                      # predicted(): the default workers
    assert [(r["rank"], r["token"], r["piece"]) for r in rows] == [(r["rank"], r["token"], r["piece"]) for r in one]
    assert max(abs(r["probability"] - r1["probability"]) + abs(r["logit"] - r1["logit"])
               for r, r1 in zip(rows, one)) <= 1e-4

    traced = [runs.sub("run N", run_cli("trace", "-n", "3", "-m", MODEL, "--workers", workers, PROMPT).stdout)
              for workers in ("1", "3")]
    assert traced[0] == traced[1]
    trace_id = latest_run(db, "generate")
    run_cli("lens", "-n", "3", "-o", str(tmp_path / "lens.png"), "-m", MODEL, "--workers", "2", PROMPT)
    one_id = db.execute("select max(id) from gptsql.run where kind = 'generate' and id < %s", [trace_id]).fetchone()[0]
    for run_id in (trace_id, latest_run(db, "generate")):                   # trace and lens over workers
        assert_same_record(recorded(db, run_id), recorded(db, one_id))


def test_cli_workers_give_the_same_text(run_cli, hf_model):
    one = run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", "--workers", "1", PROMPT).stdout
    assert run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", "--workers", "3", PROMPT).stdout == one
    assert run_cli("generate", "-m", MODEL, "-n", "6", "-t", "0", PROMPT).stdout == one   # the default


def test_too_many_workers_is_one_line(run_cli, hf_model):
    result = run_cli("generate", "-m", MODEL, "-n", "2", "--workers", "5", PROMPT, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 5 workers but the model has 4 heads")
    assert "Traceback" not in result.stderr


@pytest.fixture
def two_connections(database, db):
    """A DSN whose role the server lets open two connections only (superusers pass the limit)."""
    db.execute("drop role if exists gptsql_w12")   # left by an interrupted session: has no grants then
    db.execute("create role gptsql_w12 login connection limit 2")
    db.execute("grant usage on schema gptsql to gptsql_w12")
    db.execute("grant all on all tables in schema gptsql to gptsql_w12")
    db.execute("grant all on all sequences in schema gptsql to gptsql_w12")
    try:
        yield psycopg.conninfo.make_conninfo(database.dsn(), user="gptsql_w12")
    finally:
        for (pid,) in db.execute("select pid from pg_stat_activity where usename = 'gptsql_w12'").fetchall():
            db.execute("select pg_terminate_backend(%s)", [pid])
        db.execute("drop owned by gptsql_w12")
        db.execute("drop role if exists gptsql_w12")


def test_refused_worker_connection_is_one_line_and_fails_the_run(database, db, hf_model, two_connections):
    lead = psycopg.connect(two_connections, autocommit=True)
    with pytest.raises(UserError, match=r"^the server refused worker connection 2 of 3 .*use fewer --workers"):
        start_generation(database.__class__(dsn=two_connections), lead, 3, MODEL, PROMPT, 2)
    lead.close()
    status = db.execute("select status from gptsql.run order by id desc limit 1").fetchone()[0]
    assert status == "failed"


def test_default_workers_refused_go_on_with_the_same_run_on_one_backend(database, db, hf_model, two_connections):
    """The default (one worker per core) gives way to one backend on a busy server: the run it had
    started goes on there and ends done, with no failed run left behind."""
    before = db.execute("select coalesce(max(id), 0) from gptsql.run").fetchone()[0]
    lead = psycopg.connect(two_connections, autocommit=True)
    gen = start_generation(database.__class__(dsn=two_connections), lead, None, MODEL, PROMPT, 3, temperature=0)
    text = "".join(gen.stream())
    lead.close()
    runs = db.execute("select id, status from gptsql.run where id > %s", [before]).fetchall()
    assert runs == [(gen.run_id, "done")]
    one = db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
    assert text == one


def test_default_workers_leave_half_the_connections_to_other_commands(database, db, hf_model, monkeypatch):
    """The default workers take connections only while half of max_connections stays free: a crowd
    of commands (3 connections each on 2 cores) took every slot on workers, and the commands that
    came later waited for one, then failed. With the server half full a generation runs on one
    backend (the same text); with it empty, over the workers."""
    from gptsql.driver.generation import Generation
    from gptsql.driver.workers import ShardedGeneration

    monkeypatch.setattr(os, "cpu_count", lambda: 2)   # the default: one worker per core
    used, limit = db.execute("select count(*), current_setting('max_connections')::int from pg_stat_activity "
                             "where backend_type = 'client backend'").fetchone()
    held = [psycopg.connect(database.dsn(), autocommit=True) for _ in range(limit // 2 - used)]
    try:
        crowded = start_generation(database, db, None, MODEL, PROMPT, 3, temperature=0)
        assert type(crowded) is Generation
        text = "".join(crowded.stream())
    finally:
        for conn in held:
            conn.close()
    empty = start_generation(database, db, None, MODEL, PROMPT, 3, temperature=0)
    assert isinstance(empty, ShardedGeneration) and empty.workers.n == 2
    assert "".join(empty.stream()) == text


def test_default_workers_given_back_when_other_commands_took_the_room_meanwhile(database, db, hf_model,
                                                                                 monkeypatch):
    """Commands started together each pass the first check (their leads connected, no workers yet):
    one that finds the server past half once its workers are connected gives them back and runs on
    one backend."""
    from gptsql.driver.generation import Generation
    from gptsql.driver.workers import ShardedGeneration
    from gptsql.server.db import wait_for

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    limit = db.execute("select current_setting('max_connections')::int").fetchone()[0]
    held, workers, connect_workers = [], [], ShardedGeneration.start_workers

    def others_connect_meanwhile(self, *args):
        connect_workers(self, *args)
        workers.extend(c.info.backend_pid for c in self.workers.conns)
        # counted now, with the workers in: earlier tests' connections may have ended since the start
        used = db.execute("select count(*) from pg_stat_activity where backend_type = 'client backend'").fetchone()[0]
        held.extend(psycopg.connect(database.dsn(), autocommit=True) for _ in range(limit // 2 - used + 1))

    monkeypatch.setattr(ShardedGeneration, "start_workers", others_connect_meanwhile)
    try:
        gen = start_generation(database, db, None, MODEL, PROMPT, 3, temperature=0)
        assert type(gen) is Generation and len(workers) == 2
        assert wait_for(lambda: not db.execute("select count(*) from pg_stat_activity where pid = any(%s)",
                                               [workers]).fetchone()[0], 10)   # the workers left
        text = "".join(gen.stream())
    finally:
        for conn in held:
            conn.close()
    assert text == db.execute("select gptsql.generate(%s, 3, model => %s)", [PROMPT, MODEL]).fetchone()[0]
