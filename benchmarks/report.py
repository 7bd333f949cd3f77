"""The benchmark's table."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.1f} ms"


def render(r: dict, console: Console | None = None) -> None:
    console = console or Console(width=110)
    table = Table(title=f"gptsql bench — random:{r['shape']} ({r['n_params'] / 1e6:.0f}M parameters), "
                        f"storage {r['dtype']}")
    table.add_column("measure")
    table.add_column("SQL", justify="right")
    table.add_column("numpy", justify="right")
    table.add_column("PyTorch", justify="right")
    table.add_column("SQL / PyTorch", justify="right")
    table.add_column("SQL / numpy", justify="right")
    torch = r.get("torch", {})
    ratios = r.get("ratios", {})
    table.add_row("load", f"{r['load_s']:.1f} s", "", "", "", "")
    table.add_row("size on disk", f"{r['size_bytes'] / 2**20:,.0f} MB", "", "", "", "")
    table.add_row("prefill 64 tokens", ms(r["sql"]["prefill_s"]), ms(r["numpy"]["prefill_s"]),
                  ms(torch.get("prefill_s")), f"{ratios.get('prefill_sql_over_torch', 0):.1f}×",
                  f"{ratios['prefill_sql_over_numpy']:.1f}×")
    table.add_row("decode per token (median)", ms(r["sql"]["decode_s"]), ms(r["numpy"]["decode_s"]),
                  ms(torch.get("decode_s")), f"{ratios.get('decode_sql_over_torch', 0):.1f}×",
                  f"{ratios['decode_sql_over_numpy']:.1f}×")
    floors = (("prefill floor: all weights × 64 places", "prefill_weights_pass_s",
               "prefill_weights_pass_over_torch_prefill"),
              ("decode floor: one pass over all weights", "weights_pass_s", "weights_pass_over_torch_decode"))
    for label, key, ratio in floors:
        if key in r["sql"]:
            table.add_row(label, ms(r["sql"][key]), "", "",
                          f"{ratios[ratio]:.1f}×" if ratio in ratios else "", "")
    for n_ctx, seconds in r["sql"].get("by_context", {}).items():
        table.add_row(f"decode per token at context {n_ctx}", ms(seconds), "", "", "", "")
    if "decode_longest_over_ctx16" in ratios:
        by_context = r["sql"]["by_context"]
        table.add_row(f"decode at context {max(by_context)} / at {min(by_context)}",
                      f"{ratios['decode_longest_over_ctx16']:.2f}×", "", "", "", "")
    for n, point in r.get("curve", {}).items():
        table.add_row(f"prompt of {n} tokens: time to first token", ms(point["sql_ttft_s"]), "",
                      ms(point.get("torch_ttft_s")), f"{point['ttft_ratio']:.1f}×" if "ttft_ratio" in point else "", "")
        table.add_row(f"prompt of {n} tokens: decode step after it", ms(point["sql_decode_s"]), "",
                      ms(point.get("torch_decode_s")),
                      f"{point['decode_ratio']:.1f}×" if "decode_ratio" in point else "", "")
    w = r.get("workers")
    if w:
        for label, key, floor in (("prefill 64 tokens", "prefill", "prefill_s"),
                                  ("decode per token (median)", "decode", "decode_s"),
                                  ("decode per token at context 16", "ctx16", "decode_s")):
            ratios_text = ", ".join(f"{x:.2f}" for x in w[f"{key}_ratios"])
            versus_torch = (f"{w[f'workers_{key}_s'] / torch[floor]:.1f}×" if floor in torch else "")
            table.add_row(f"{label}: one backend", ms(w[f"one_{key}_s"]), "", "", "", "")
            table.add_row(f"{label}: {w['n']} workers ({ratios_text}× one, A/B)", ms(w[f"workers_{key}_s"]),
                          "", ms(torch.get(floor)), versus_torch, "")
        table.add_row(f"greedy tokens: {w['n']} workers same as one", "yes" if w["tokens_same"] else "NO",
                      "", "", "", "")
    for size, b in r.get("batches", {}).items():
        table.add_row(f"batch of {size}: per generated token ({b['sql_over_one']:.2f}× one sequence's)",
                      ms(b["sql_per_token_s"]), "", ms(b.get("torch_per_token_s")),
                      f"{b['sql_per_token_s'] / b['torch_per_token_s']:.1f}×" if "torch_per_token_s" in b else "", "")
    if r.get("batches"):
        same = all(b["same_as_alone"] for b in r["batches"].values())
        table.add_row("greedy tokens: each sequence of a batch as alone", "yes" if same else "NO", "", "", "", "")
    s = r.get("scoring")
    if s:
        table.add_row(f"scoring {s['texts']} texts of {s['length']} tokens together (tokens/s)",
                      f"{s['together_tokens_per_s']:,.1f}", "", "", "", "")
        table.add_row(f"  one call each (tokens/s; together: {s['together_over_apart']:.2f}×)",
                      f"{s['apart_tokens_per_s']:,.1f}", "", "", "", "")
    fidelity = r.get("fidelity")
    if fidelity:
        table.add_row("max |Δlogit| vs float32 PyTorch", f"{fidelity['max_abs_logit_error']:.2e}", "", "", "", "")
        table.add_row("greedy tokens same as PyTorch",
                      f"{fidelity['greedy_tokens_agreeing']}/{len(r['sql']['tokens'])}", "", "", "", "")
    tok = r.get("tokenizer")
    if tok:
        for key, value in tok.items():
            if isinstance(value, (int, float)):
                table.add_row(f"tokenizer: {key}", f"{value:,.0f}", "", "", "", "")
    console.print(table)
