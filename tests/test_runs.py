"""Recorded runs: the views of sql/09_runs.sql against the raw tables and numpy, the `runs`, `trace`,
`attention` and `lens` commands, and the pictures they draw."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gptsql.driver.generation import Generation

PROMPT = "Happy New Year! I wish"
PROMPT_TOKENS = [25082, 968, 6280, 0, 314, 4601]
N_NEW = 5
VIEWS = ["runs", "run_tokens", "step_candidates", "attention_weights", "residual_norms", "token_embeddings"]


def generate(db, model, prompt=PROMPT, n=N_NEW, temperature=0.0, seed=None, record=True):
    gen = Generation(db, model, prompt, n, temperature, 0, 1.0, seed, record=record)
    text = "".join(gen.stream())
    return gen.run_id, text, gen.tokens


@pytest.fixture(scope="module")
def greedy(db, tiny):
    run_id, text, tokens = generate(db, tiny)
    return {"id": run_id, "text": text, "tokens": tokens}


@pytest.fixture(scope="module")
def sampled(db, tiny):
    run_id, text, tokens = generate(db, tiny, temperature=1.5, seed=7)
    return {"id": run_id, "text": text, "tokens": tokens}


@pytest.fixture(scope="module")
def shape(db, tiny):
    return db.execute("select n_layer, n_head, n_embd from gptsql.model where name = %s", [tiny]).fetchone()


@pytest.fixture
def wide(monkeypatch):
    """Rich lays tables out for COLUMNS (80 without a terminal): room for whole cells."""
    monkeypatch.setenv("COLUMNS", "250")


def rows(db, query, params=()):
    cur = db.execute(query, params)
    names = [c.name for c in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------------------- views
def test_runs_view_describes_the_run(db, greedy):
    r = rows(db, "select * from gptsql.runs where run = %s", [greedy["id"]])[0]
    assert (r["model"], r["kind"], r["status"], r["prompt"]) == ("random-tiny", "generate", "done", PROMPT)
    assert (r["prompt_tokens"], r["generated_tokens"], r["max_tokens"]) == (len(PROMPT_TOKENS), N_NEW, N_NEW)
    assert r["generated_text"] == greedy["text"] and r["generated_text"]
    assert r["temperature"] == 0 and r["recorded"] is True and r["error"] is None
    elapsed = [e for (e,) in db.execute("select elapsed_ms from gptsql.run_token where run_id = %s and not is_prompt "
                                        "order by place", [greedy["id"]])]
    assert r["prefill_ms"] == pytest.approx(elapsed[0])
    assert r["decode_ms_per_token"] == pytest.approx(np.mean(elapsed[1:]))
    assert r["tokens_per_second"] == pytest.approx(N_NEW / sum(elapsed) * 1000)
    assert r["total_ms"] >= sum(elapsed) * 0.99


def test_run_tokens_are_the_prompt_then_the_choices(db, greedy):
    got = rows(db, "select * from gptsql.run_tokens where run = %s order by place", [greedy["id"]])
    assert [t["place"] for t in got] == list(range(len(PROMPT_TOKENS) + N_NEW))
    assert [t["token"] for t in got] == PROMPT_TOKENS + greedy["tokens"]
    assert "".join(t["piece"] for t in got) == PROMPT + greedy["text"]
    prompt, new = got[:len(PROMPT_TOKENS)], got[len(PROMPT_TOKENS):]
    assert all(t["is_prompt"] and t["probability"] is None and t["rank"] is None for t in prompt)
    assert all(not t["is_prompt"] and 0 < t["probability"] <= 1 for t in new)
    assert [t["rank"] for t in new] == [1] * N_NEW            # greedy takes the most probable every time


def test_step_candidates_rank_the_next_token(db, greedy, sampled):
    got = rows(db, "select * from gptsql.step_candidates where run = %s order by step, rank", [greedy["id"]])
    assert len(got) == 10 * N_NEW
    pieces = {t["place"]: t["piece"] for t in rows(db, "select * from gptsql.run_tokens where run = %s", [greedy["id"]])}
    for step in range(1, N_NEW + 1):
        cands = [c for c in got if c["step"] == step]
        assert [c["rank"] for c in cands] == list(range(1, 11))
        probs = [c["probability"] for c in cands]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        place = len(PROMPT_TOKENS) - 1 + step
        assert {c["place"] for c in cands} == {place}
        assert {c["after_piece"] for c in cands} == {pieces[place - 1]}
        assert [c["rank"] for c in cands if c["chosen"]] == [1]
        assert cands[0]["token"] == greedy["tokens"][step - 1]
    # Sampling: the chosen candidate (if among the ten) is the token the run went on with.
    got = rows(db, "select * from gptsql.step_candidates where run = %s", [sampled["id"]])
    for step in range(1, N_NEW + 1):
        chosen = [c["token"] for c in got if c["step"] == step and c["chosen"]]
        assert chosen in ([], [sampled["tokens"][step - 1]])
    assert any(c["chosen"] and c["rank"] > 1 for c in got), "temperature 1.5 should leave rank 1 at least once"


def test_attention_weights_unnest_every_row(db, greedy, shape):
    n_layer, n_head, _ = shape
    got = rows(db, "select * from gptsql.attention_weights where run = %s", [greedy["id"]])
    read = len(PROMPT_TOKENS) + N_NEW - 1                    # the last chosen token is never read back
    assert len(got) == n_layer * n_head * read * (read + 1) // 2
    assert all(0 <= w["key_place"] <= w["query_place"] < read for w in got)
    sums = {}
    for w in got:
        key = (w["block"], w["head"], w["query_place"])
        sums[key] = sums.get(key, 0) + w["weight"]
    assert len(sums) == n_layer * n_head * read and all(abs(s - 1) < 1e-9 for s in sums.values())
    pieces = {t["place"]: t["piece"] for t in rows(db, "select * from gptsql.run_tokens where run = %s", [greedy["id"]])}
    assert all(w["key_piece"] == pieces[w["key_place"]] and w["query_piece"] == pieces[w["query_place"]] for w in got)
    raw = db.execute("select weights from gptsql.attention_row where run_id = %s and block = 1 and head = 2 "
                     "and place = 7", [greedy["id"]]).fetchone()[0]
    view = [w["weight"] for w in sorted(got, key=lambda w: w["key_place"])
            if (w["block"], w["head"], w["query_place"]) == (1, 2, 7)]
    assert view == raw


def test_residual_norms_are_the_vectors_norms(db, greedy, shape):
    n_layer = shape[0]
    raw = db.execute("select block, place, after_attention::real[], after_mlp::real[] from gptsql.residual "
                     "where run_id = %s", [greedy["id"]]).fetchall()
    assert len(raw) == n_layer * (len(PROMPT_TOKENS) + N_NEW - 1)
    got = {(r["block"], r["place"]): r for r in rows(db, "select * from gptsql.residual_norms where run = %s",
                                                     [greedy["id"]])}
    for block, place, a, h in raw:
        assert got[block, place]["norm_after_attention"] == pytest.approx(np.linalg.norm(a), rel=1e-5)
        assert got[block, place]["norm_after_mlp"] == pytest.approx(np.linalg.norm(h), rel=1e-5)
        assert got[block, place]["norm_after_mlp"] != pytest.approx(got[block, place]["norm_after_attention"])


def embeddings(db, model):
    return np.array([w for (w,) in db.execute(
        "select embedding::real[] from gptsql.token_embeddings where model = %s order by token", [model])],
        dtype=np.float64)


def numpy_lens(db, model, hidden):
    """ln_f and the token embeddings in numpy: (top token, its probability)."""
    gamma, beta, eps = db.execute(
        """select n.gamma::real[], n.beta::real[], m.layer_norm_epsilon from gptsql.norm n
           join gptsql.model m on m.id = n.model_id where m.name = %s and n.name = 'ln_f'""", [model]).fetchone()
    gamma, beta = np.array(gamma, dtype=np.float64), np.array(beta, dtype=np.float64)
    wte = embeddings(db, model)
    x = (hidden - hidden.mean()) / np.sqrt(hidden.var() + eps) * gamma + beta
    logits = wte.astype(np.float64) @ x
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return int(np.argmax(logits)), float(p.max())


def test_logit_lens_last_block_is_the_models_prediction(db, greedy, shape, tiny):
    n_layer = shape[0]
    lens = rows(db, "select * from gptsql.logit_lens(%s, 3)", [greedy["id"]])
    read = len(PROMPT_TOKENS) + N_NEW - 1
    assert len(lens) == n_layer * read * 3
    steps = rows(db, "select * from gptsql.step_candidates where run = %s and rank <= 3", [greedy["id"]])
    for s in steps:                   # the last block's lens at place p is the step that chose place p + 1
        [l] = [l for l in lens if (l["block"], l["place"], l["rank"]) == (n_layer - 1, s["place"] - 1, s["rank"])]
        assert (l["token"], l["predicted_piece"]) == (s["token"], s["piece"])
        assert l["probability"] == pytest.approx(s["probability"], rel=1e-9)
    tokens = PROMPT_TOKENS + greedy["tokens"]
    assert all(l["is_next"] == (l["token"] == tokens[l["place"] + 1]) for l in lens)
    assert any(l["is_next"] for l in lens) and not all(l["is_next"] for l in lens)
    # An earlier block, checked against numpy.
    hidden = np.array(db.execute("select after_mlp::real[] from gptsql.residual where run_id = %s and block = 0 "
                                 "and place = 3", [greedy["id"]]).fetchone()[0], dtype=np.float64)
    token, p = numpy_lens(db, tiny, hidden)
    [first] = rows(db, "select * from gptsql.logit_lens(%s, 1, 3) where block = 0", [greedy["id"]])
    assert (first["token"], first["place"], first["piece"]) == (token, 3, "!")
    assert first["probability"] == pytest.approx(p, rel=1e-4)
    assert {l["place"] for l in rows(db, "select * from gptsql.logit_lens(%s, 2, 3)", [greedy["id"]])} == {3}


def test_nearest_tokens_by_cosine(db, tiny):
    got = db.execute(
        """with target as (select embedding from gptsql.token_embeddings where model = %(m)s and token = 6280)
           select e.token, 1 - (e.embedding <=> target.embedding) from gptsql.token_embeddings e, target
           where e.model = %(m)s order by e.embedding <=> target.embedding limit 5""", {"m": tiny}).fetchall()
    wte = embeddings(db, tiny)
    cosine = wte @ wte[6280] / (np.linalg.norm(wte, axis=1) * np.linalg.norm(wte[6280]))
    assert [t for t, _ in got] == list(np.argsort(-cosine)[:5])
    assert got[0] == (6280, pytest.approx(1.0))
    assert [c for _, c in got] == pytest.approx(list(np.sort(cosine)[::-1][:5]), rel=1e-5)


def test_every_view_and_column_is_documented(db):
    for view in VIEWS:
        comment = db.execute("select obj_description(%s::regclass, 'pg_class')", [f"gptsql.{view}"]).fetchone()[0]
        assert comment and len(comment) > 20, view
        cols = db.execute(
            """select a.attname, col_description(a.attrelid, a.attnum) from pg_attribute a
               where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped""", [f"gptsql.{view}"]).fetchall()
        assert len(cols) >= 4
        assert [name for name, text in cols if not text] == [], view
    assert db.execute("select obj_description('gptsql.logit_lens(bigint, int, int)'::regprocedure)").fetchone()[0]


def test_latest_run_is_the_newest_run_of_any_kind(db, tiny, greedy):
    run_id, _, _ = generate(db, tiny, n=1)
    db.execute("select * from gptsql.predict('Hello', 3, %s)", [tiny])
    assert db.execute("select gptsql.latest_run('generate')").fetchone()[0] == run_id
    assert db.execute("select gptsql.latest_run('predict')").fetchone()[0] > run_id
    assert db.execute("select gptsql.latest_run()").fetchone()[0] > run_id         # as the CLI's `latest`


def test_an_unrecorded_run_keeps_tokens_only(db, tiny, run_cli):
    run_id, text, _ = generate(db, tiny, n=3, record=False)
    r = rows(db, "select * from gptsql.runs where run = %s", [run_id])[0]
    assert (r["recorded"], r["generated_tokens"], r["generated_text"]) == (False, 3, text)
    for query in ["select count(*) from gptsql.attention_weights where run = %s",
                  "select count(*) from gptsql.residual_norms where run = %s",
                  "select count(*) from gptsql.step_candidates where run = %s",
                  "select count(*) from gptsql.logit_lens(%s)"]:
        assert db.execute(query, [run_id]).fetchone()[0] == 0
    result = run_cli("lens", "--run", str(run_id), check=False)
    assert result.returncode == 1 and "--no-record" in result.stderr


# ------------------------------------------------------------------------------------- runs CLI
def test_runs_list_and_show(run_cli, greedy, wide):
    out = run_cli("runs", "list", "--limit", "50").stdout       # piped: tab-separated, whole values
    header, *lines = [l.split("\t") for l in out.splitlines()]
    [line] = [dict(zip(header, l)) for l in lines if l[:2] == [str(greedy["id"]), "random-tiny"]]
    assert line["status"] == "done" and line["prompt"] == PROMPT and line["generated"] == greedy["text"]
    assert (line["prompt_tokens"], line["generated_tokens"]) == (str(len(PROMPT_TOKENS)), str(N_NEW))
    listed = [json.loads(line) for line in run_cli("runs", "list", "--json", "--limit", "100").stdout.splitlines()]
    mine = [r for r in listed if r["run"] == greedy["id"]]
    assert len(mine) == 1 and mine[0]["generated_text"] == greedy["text"] and mine[0]["status"] == "done"
    assert [r["run"] for r in listed] == sorted((r["run"] for r in listed), reverse=True)
    shown = run_cli("runs", "show", str(greedy["id"])).stdout
    assert PROMPT + greedy["text"] in shown
    assert "greedy" in shown and "prefill" in shown and "decode" in shown
    assert f"{len(PROMPT_TOKENS)} prompt + {N_NEW} generated" in shown
    for token in greedy["tokens"]:
        assert f" {token} " in shown                          # every token's row, with its id
    missing = run_cli("runs", "show", "987654", check=False)
    assert missing.returncode == 1 and "no run 987654" in missing.stderr


def test_runs_drop(db, tiny, run_cli):
    old, _, _ = generate(db, tiny, n=2)
    new, _, _ = generate(db, tiny, n=2)
    db.execute("update gptsql.run set started_at = now() - interval '8 days' where id = %s", [old])
    out = run_cli("runs", "drop", "--older-than", "7d").stdout
    assert str(old) in out
    assert db.execute("select count(*) from gptsql.run where id = %s", [old]).fetchone()[0] == 0
    assert db.execute("select count(*) from gptsql.run where id = %s", [new]).fetchone()[0] == 1
    run_cli("runs", "drop", str(new))
    for table in ["run", "run_token", "residual", "attention_row", "step_logit"]:
        key = "id" if table == "run" else "run_id"
        assert db.execute(f"select count(*) from gptsql.{table} where {key} = any(%s)", [[old, new]]).fetchone()[0] == 0
    for args, message in [(["drop"], "give run ids"), (["drop", "--older-than", "soon"], "30m, 12h, 7d"),
                          (["drop", str(new)], f"no run {new}")]:
        result = run_cli("runs", *args, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    # A run still running (its connection is alive) is not dropped.
    running = db.execute("select run_id from gptsql.start_run(%s, 'Hi', 1)", [tiny]).fetchone()[0]
    result = run_cli("runs", "drop", str(running), check=False)
    assert result.returncode == 1 and "still running" in result.stderr
    db.execute("select gptsql.finish_run(%s)", [running])


# ---------------------------------------------------------------------------------------- trace
def test_trace_prints_the_lens_and_the_candidates(db, run_cli, tiny, shape, wide):
    out = run_cli("trace", "-m", tiny, "-n", "3", PROMPT).stdout
    run_id = db.execute("select gptsql.latest_run()").fetchone()[0]
    r = rows(db, "select * from gptsql.runs where run = %s", [run_id])[0]
    assert r["prompt"] == PROMPT and r["temperature"] == 0 and r["generated_tokens"] == 3
    last = len(PROMPT_TOKENS) + 1                             # the last place read: prompt + 2 generated
    assert f"Logit lens at place {last}" in out
    lens = rows(db, "select * from gptsql.logit_lens(%s, 5, %s) order by block, rank", [run_id, last])
    for block in range(shape[0]):
        line = next(l for l in out.splitlines() if l.startswith(f"│ {block} "))
        top = [l for l in lens if l["block"] == block][0]
        assert repr(top["predicted_piece"]) in line
    steps = rows(db, "select * from gptsql.step_candidates where run = %s and rank = 1 order by step", [run_id])
    assert "Top candidates at each step" in out
    for s in steps:
        assert f"│ {s['step']} " in out and f"{s['probability']:.3f}" in out and repr(s["piece"]) in out
    bad = run_cli("trace", "--run", str(run_id), "--place", "99", check=False)
    assert bad.returncode == 1 and f"between 0 and {last}" in bad.stderr
    neither = run_cli("trace", check=False)
    assert neither.returncode == 1 and "give a PROMPT" in neither.stderr


# -------------------------------------------------------------------------------------- pictures
def test_attention_picture_of_one_head(db, greedy, shape, tmp_path):
    from gptsql.plots.figures import shown
    from gptsql.cli.runs import draw_attention

    picture = draw_attention(db, greedy["id"], 1, 2, tmp_path / "attn.png")
    assert png_size(picture.path) == (picture.width, picture.height)
    assert picture.width >= 400 and picture.height >= 400
    assert "block 1, head 2" in picture.title
    [panel] = picture.panels
    read = len(PROMPT_TOKENS) + N_NEW - 1
    labels = [shown(t["piece"]) for t in rows(db, "select piece from gptsql.run_tokens where run = %s and place < %s "
                                                  "order by place", [greedy["id"], read])]
    assert panel.xlabels == labels and panel.ylabels == labels and len(labels) == read
    assert labels[1] == "␣New"
    raw = dict(db.execute("select place, weights from gptsql.attention_row where run_id = %s and block = 1 "
                          "and head = 2", [greedy["id"]]).fetchall())
    for q in range(read):
        assert np.allclose(panel.values[q, :q + 1], raw[q])
        assert np.isnan(panel.values[q, q + 1:]).all()      # the causal mask: nothing above the diagonal


def test_attention_cli_grid_of_all_heads(run_cli, greedy, shape, tmp_path):
    out = tmp_path / "heads.png"
    result = run_cli("attention", "--run", str(greedy["id"]), "--block", "0", "--head", "all", "--out", str(out))
    width, height = png_size(out)
    assert f"({width}×{height} px)" in result.stdout and "all 4 heads" in result.stdout
    single = tmp_path / "one.png"
    run_cli("attention", "--run", str(greedy["id"]), "--block", "0", "--head", "0", "--out", str(single))
    assert width > png_size(single)[0] and height > png_size(single)[1]     # a grid of panels
    for args, message in [(["--block", "9"], "between 0 and 1"), (["--head", "4"], "between 0 and 3"),
                          (["--head", "x"], "head number or 'all'")]:
        bad = run_cli("attention", "--run", str(greedy["id"]), *args, "--out", str(tmp_path / "bad.png"), check=False)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
    assert not (tmp_path / "bad.png").exists()


def test_attention_grid_panels(db, greedy, shape, tmp_path):
    from gptsql.cli.runs import draw_attention

    picture = draw_attention(db, greedy["id"], 0, None, tmp_path / "grid.png")
    n_head = shape[1]
    assert [p.title for p in picture.panels] == [f"block 0, head {h}" for h in range(n_head)]
    read = len(PROMPT_TOKENS) + N_NEW - 1
    assert all(len(p.xlabels) == len(p.ylabels) == read for p in picture.panels)
    assert not np.allclose(picture.panels[0].values, picture.panels[1].values, equal_nan=True)
    assert png_size(picture.path) == (picture.width, picture.height)


def test_lens_picture(db, greedy, shape, tmp_path):
    from gptsql.plots.figures import shown
    from gptsql.cli.runs import draw_lens

    picture = draw_lens(db, greedy["id"], tmp_path / "lens.png")
    assert png_size(picture.path) == (picture.width, picture.height)
    assert "Logit lens" in picture.title
    [panel] = picture.panels
    n_layer = shape[0]
    read = len(PROMPT_TOKENS) + N_NEW - 1
    assert panel.ylabels == [f"block {b}" for b in range(n_layer)]
    tokens = rows(db, "select piece from gptsql.run_tokens where run = %s order by place", [greedy["id"]])
    assert panel.xlabels == [shown(t["piece"]) for t in tokens[:read]]
    lens = rows(db, "select * from gptsql.logit_lens(%s, 1)", [greedy["id"]])
    assert panel.values.shape == (n_layer, read)
    for l in lens:
        assert panel.values[l["block"], l["place"]] == pytest.approx(l["probability"])


def test_lens_cli_runs_a_prompt(db, run_cli, tiny, tmp_path):
    out = tmp_path / "lens.png"
    result = run_cli("lens", "-m", tiny, "I wish you a happy New", "--out", str(out))
    width, height = png_size(out)
    run_id = db.execute("select gptsql.latest_run()").fetchone()[0]
    r = rows(db, "select * from gptsql.runs where run = %s", [run_id])[0]
    assert r["prompt"] == "I wish you a happy New" and r["generated_tokens"] == 1
    assert result.stdout.strip() == f"wrote {out} ({width}×{height} px): 2 blocks × 6 places of run {run_id}"
