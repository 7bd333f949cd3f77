"""Decode time per token by path: the CLI's loop (one gptsql.step per token, as driver/ runs it)
against psql's `select gptsql.generate(...)` (one recursive statement), each on the default shares
and on one backend, for every model named; each case in turn, three rounds, the median.

    python benchmarks/paths.py random-gpt2 smollm2      # models already loaded (gptsql load ...)

docs/speed.md keeps the figures of the 124M GPT-2 shape and SmolLM2-135M.
"""
from __future__ import annotations

import statistics
import sys
import time

from gptsql.server.db import Database

PROMPT = "Happy New Year! I wish you a very happy and"
TOKENS = 33
ROUNDS = 3


def use_shares(conn, shares: str) -> None:
    conn.execute("select set_config('gptsql.shares', %s, false)", [shares])


def cli_path(conn, model: str) -> float:
    """Milliseconds per token of one gptsql.step per token, the first (the prompt) left out."""
    run, fresh = conn.execute("select run_id, tokens from gptsql.start_run(%s, %s, %s, record => false)",
                              [model, PROMPT, TOKENS]).fetchone()
    start, times = 0, []
    for _ in range(TOKENS):
        began = time.perf_counter()
        token = conn.execute("select token from gptsql.step(%s, %s, %s)", [run, fresh, start], prepare=True).fetchone()[0]
        times.append(time.perf_counter() - began)
        start, fresh = start + len(fresh), [token]
    conn.execute("select gptsql.finish_run(%s)", [run])
    return statistics.median(times[1:]) * 1000


def psql_path(conn, model: str) -> float:
    """Milliseconds per token of one gptsql.generate statement after its first token (the run's own
    clock gives the first token's time)."""
    began = time.perf_counter()
    conn.execute("select gptsql.generate(%s, %s, model => %s, record => false)", [PROMPT, TOKENS, model])
    wall = (time.perf_counter() - began) * 1000
    run = conn.execute("select max(id) from gptsql.run").fetchone()[0]
    first = conn.execute("select min(elapsed_ms) from gptsql.run_token where run_id = %s and not is_prompt",
                         [run]).fetchone()[0]
    return (wall - first) / (TOKENS - 1)


def main(models: list[str]) -> None:
    conn = Database().connect()
    default = str(conn.execute("select gptsql.shares(id) from gptsql.model where name = %s", [models[0]]).fetchone()[0])
    cases = [(path, model, shares) for model in models for shares in (default, "1")
             for path in ("cli", "psql")]
    paths = {"cli": cli_path, "psql": psql_path}
    for _, model, _ in cases[::4]:            # warm the buffers and the backends once per model
        use_shares(conn, default)
        cli_path(conn, model)
    results: dict = {case: [] for case in cases}
    for round_ in range(ROUNDS):
        for case in cases:
            path, model, shares = case
            use_shares(conn, shares)
            results[case].append(paths[path](conn, model))
            print(f"round {round_ + 1}: {path:4} {model} on {shares} share(s): {results[case][-1]:.1f} ms", flush=True)
    print()
    for (path, model, shares), times in results.items():
        print(f"{path:4} {model:>16} {shares} share(s): median {statistics.median(times):6.1f} ms "
              f"({min(times):.1f}–{max(times):.1f})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/paths.py MODEL [MODEL ...]  (loaded models, e.g. random-gpt2 smollm2)")
    main(sys.argv[1:])
