"""The benchmark runs end to end (on the tiny shape: the 124M shape belongs to `gptsql bench`)."""
import json


def test_bench_prints_table_and_writes_json(run_cli, tmp_path, db):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--shape", "tiny", "--contexts", "16,64", "--decode-tokens", "3", "--json", str(out))
    assert "decode per token" in result.stdout and "SQL / PyTorch" in result.stdout
    figures = json.loads(out.read_text())
    for key in ("load_s", "size_bytes", "sql", "numpy", "torch", "ratios", "fidelity"):
        assert key in figures
    assert set(figures["sql"]["by_context"]) == {"16", "64"}
    assert figures["sql"]["prefill_s"] > 0 and figures["torch"]["decode_s"] > 0
    assert figures["sql"]["weights_pass_s"] > 0 and "decode floor: one pass over all weights" in result.stdout
    # float16 storage of a random model: the greedy tokens agree with float32 PyTorch
    assert figures["fidelity"]["top1_same"]
    # the benchmark's model is dropped afterwards
    assert db.execute("select count(*) from gptsql.model where name like 'bench-%'").fetchone()[0] == 0
