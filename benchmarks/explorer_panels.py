"""Time every panel of the explorer on one recorded run: each endpoint of a running `gptsql serve`
asked as the page asks it (the attention grid and the lens a block at a time), the best of three.

    python benchmarks/explorer_panels.py http://127.0.0.1:8000/ RUN [PLACE]

Prints one line per panel (milliseconds) and the whole of the paged ones; docs/explorer.md keeps
the numbers of a 200-place run on the 124M shape.
"""
from __future__ import annotations

import json
import sys
import time
import urllib.request


def ask(base: str, path: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=120) as answer:
        body = json.loads(answer.read())
    return (time.perf_counter() - started) * 1000, body


def best(base: str, path: str, tries: int = 3) -> tuple[float, dict]:
    times, body = [], None
    for _ in range(tries):
        ms, body = ask(base, path)
        times.append(ms)
    return min(times), body


def main(base: str, run: int, place: int | None = None) -> None:
    _, inside = ask(base, f"/api/runs/{run}/inside")
    info = dict(zip(inside["columns"], inside["rows"][0]))
    n_layer, places = info["n_layer"], info["places"]
    place = places - 1 if place is None else place
    block, head = n_layer // 2, info["n_head"] // 2
    print(f"run {run}: {info['model']}, {places} places read, {n_layer} blocks; place {place}, block {block}, head {head}")
    panels = {
        "runs list": "/api/runs?limit=50",
        "run": f"/api/runs/{run}",
        "tokens": f"/api/runs/{run}/tokens",
        "step (ten recorded, T)": f"/api/runs/{run}/steps/1?temperature=0.5",
        "attention: one head large": f"/api/runs/{run}/attention/{block}/{head}",
        "residual norms": f"/api/runs/{run}/norms",
        "model parts": f"/api/models/{info['model']}/parts",
        "inside: run and shape": f"/api/runs/{run}/inside",
        "inside: tokens": f"/api/runs/{run}/inside/tokens",
        "inside: embeddings": f"/api/runs/{run}/inside/{place}/embedding",
        "inside: ln_1": f"/api/runs/{run}/inside/{place}/norm/ln_1?block={block}",
        "inside: attention head": f"/api/runs/{run}/inside/{place}/attention/{block}/{head}",
        "inside: projection, residual": f"/api/runs/{run}/inside/{place}/projection/{block}",
        "inside: ln_2": f"/api/runs/{run}/inside/{place}/norm/ln_2?block={block}",
        "inside: MLP": f"/api/runs/{run}/inside/{place}/mlp/{block}",
        "inside: ln_f": f"/api/runs/{run}/inside/{place}/norm/ln_f",
        "inside: logits and sampling cut": f"/api/runs/{run}/inside/{place}/sampling",
    }
    for name, path in panels.items():
        print(f"{name:40s} {best(base, path)[0]:8.0f} ms")
    paged = {
        "attention grid, per block": [f"/api/runs/{run}/attention?pixels=32&block={b}" for b in range(n_layer)],
        "logit lens (default window), per block": [f"/api/runs/{run}/lens?block={b}" for b in range(n_layer)],
        "inside: lens at the place, per 4 blocks": [f"/api/runs/{run}/inside/{place}/lens?first_block={b}&last_block="
                                                    f"{min(n_layer - 1, b + 3)}" for b in range(0, n_layer, 4)],
    }
    for name, paths in paged.items():
        times = [best(base, p)[0] for p in paths]
        print(f"{name:40s} {max(times):8.0f} ms at most, {sum(times):6.0f} ms for all {len(paths)} requests")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
