"""The benchmarks run end to end (on the tiny shape: the 124M shape belongs to `gptsql bench`)."""
import json
import os

import pytest
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_prints_table_and_writes_json(run_cli, tmp_path, db):
    out = tmp_path / "bench.json"
    plot = tmp_path / "curve.png"
    result = run_cli("bench", "--shape", "tiny", "--contexts", "16,64", "--decode-tokens", "3", "--json", str(out),
                     "--workers", "2", "--prompts", "16,100,200", "--plot", str(plot), "--batches", "1,3",
                     "--score", "3,6")
    assert "decode per token" in result.stdout and "SQL / PyTorch" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("load_s", "size_bytes", "sql", "numpy", "torch", "ratios", "fidelity"):
        assert key in figures
    assert set(figures["sql"]["by_context"]) == {"16", "64"}
    assert figures["sql"]["prefill_s"] > 0 and figures["torch"]["decode_s"] > 0
    assert figures["sql"]["weights_pass_s"] > 0 and "decode floor: one pass over all weights" in result.stdout
    # the README's fidelity figures (float32 storage here): logits within 1e-3 of PyTorch, same greedy tokens
    fidelity = figures["fidelity"]
    assert fidelity["max_abs_logit_error"] <= 1e-3
    assert fidelity["top1_same"] and fidelity["greedy_tokens_same"]
    # each ratio is the quotient of the two timings it names
    sql, numpy_, torch_, ratios = figures["sql"], figures["numpy"], figures["torch"], figures["ratios"]
    assert ratios["decode_sql_over_torch"] == sql["decode_s"] / torch_["decode_s"]
    assert ratios["prefill_sql_over_torch"] == sql["prefill_s"] / torch_["prefill_s"]
    assert ratios["weights_pass_over_torch_decode"] == sql["weights_pass_s"] / torch_["decode_s"]
    assert ratios["prefill_weights_pass_over_torch_prefill"] == sql["prefill_weights_pass_s"] / torch_["prefill_s"]
    assert ratios["decode_sql_over_numpy"] == sql["decode_s"] / numpy_["decode_s"]
    assert ratios["prefill_sql_over_numpy"] == sql["prefill_s"] / numpy_["prefill_s"]
    assert ratios["decode_longest_over_ctx16"] == sql["by_context"]["64"] / sql["by_context"]["16"]
    # the long-prompt curve: time to first token and the decode step after it, SQL and PyTorch (200
    # does not fit tiny's context of 128 with the steps after it, so it is left out)
    assert set(figures["curve"]) == {"16", "100"}
    for point in figures["curve"].values():
        assert point["ttft_ratio"] == point["sql_ttft_s"] / point["torch_ttft_s"]
        assert point["decode_ratio"] == point["sql_decode_s"] / point["torch_decode_s"]
    assert "prompt of 100 tokens: time to first token" in result.stdout
    # --plot draws that curve: a PNG of two panels (1100 x 460 px)
    import matplotlib.image

    assert matplotlib.image.imread(plot).shape[:2] == (460, 1100) and f"wrote {plot}" in result.stderr
    assert "prompt of 100 tokens: decode step after it" in result.stdout
    # one backend and the workers side by side (2 on these machines' 2 cores, at least 2 asked here)
    assert figures["workers"]["n"] >= 2 and len(figures["workers"]["decode_ratios"]) == 3
    assert figures["workers"]["tokens_same"] and "workers (" in result.stdout
    # batches beside one sequence, SQL and PyTorch; each sequence of a batch chose what it chooses alone
    batches = figures["batches"]
    assert set(batches) == {"1", "3"} and all(b["same_as_alone"] for b in batches.values())
    assert batches["3"]["sql_over_one"] == batches["3"]["sql_per_token_s"] / batches["1"]["sql_per_token_s"]
    assert batches["3"]["torch_per_token_s"] > 0 and "batch of 3: per generated token" in result.stdout
    # scoring: together and one call each
    scoring = figures["scoring"]
    assert scoring["texts"] == 3 and scoring["tokens_scored"] > 0
    assert scoring["together_over_apart"] == pytest.approx(scoring["together_tokens_per_s"]
                                                           / scoring["apart_tokens_per_s"])
    # the benchmark's model is dropped afterwards
    assert db.execute("select count(*) from gptsql.model where name like 'bench-%'").fetchone()[0] == 0
    # progress is plain lines (issue 14): no caller path from console.log, no transformers warnings
    assert "building random:tiny" in result.stderr
    for leak in ("main.py:", "FutureWarning", "[transformers]", "deprecated"):
        assert leak not in result.stderr, result.stderr


def test_bench_refuses_bad_lengths(run_cli):
    result = run_cli("bench", "--shape", "tiny", "--prompts", "64,x", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "--prompts" in lines[0] and "'64,x' is not a list of positive whole numbers" in lines[0], lines[0]


def test_hnsw_script_reports_agreement_and_drops_its_index(backend, db, tiny):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")} | backend[1]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "hnsw_topk.py"), "--model", tiny, "--queries", "3",
                             "--ef", "40,400"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "/3" in line]
    assert len(rows) == 2 and "top-1 same as exact" in result.stdout
    model_id = db.execute("select id from gptsql.model where name = %s", [tiny]).fetchone()[0]
    assert db.execute("select to_regclass(%s)", [f"gptsql.wte_{model_id}_hnsw"]).fetchone()[0] is None


def test_the_curve_picture_draws_the_figures_it_is_given(tmp_path):
    """Each panel's two lines are the curve's SQL and PyTorch figures, in prompt order (seconds for
    the time to first token, milliseconds for the decode step), whatever order the JSON keys are in."""
    import numpy as np

    from gptsql.plots import figures

    curve = {"256": {"sql_ttft_s": 50.0, "torch_ttft_s": 0.8, "ttft_ratio": 62.5, "sql_decode_s": 0.4,
                     "torch_decode_s": 0.05, "decode_ratio": 8.0},
             "64": {"sql_ttft_s": 12.0, "torch_ttft_s": 0.3, "ttft_ratio": 40.0, "sql_decode_s": 0.3,
                    "torch_decode_s": 0.04, "decode_ratio": 7.5}}
    picture = figures.prompt_curve(curve, tmp_path / "c.png", "t")
    ttft, decode = picture.panels
    assert ttft.xlabels == ["64", "256"] and decode.xlabels == ["64", "256"]
    assert np.allclose(ttft.values, [[12.0, 50.0], [0.3, 0.8]])
    assert np.allclose(decode.values, [[300.0, 400.0], [40.0, 50.0]])
    assert (tmp_path / "c.png").stat().st_size > 10_000
