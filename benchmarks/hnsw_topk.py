"""An HNSW index (pgvector, inner product) on the token embeddings for approximate top-k: how often
its top-1 and top-10 agree with the exact scan of the vocabulary, and at what cost per query.

    python benchmarks/hnsw_topk.py [--model NAME] [--queries 32] [--ef 40,200,1000]

Without --model it builds random:gpt2 (the benchmark's 124M shape), loads it, measures, and drops
it. Queries are the model's own final hidden states (after ln_f) along a greedy continuation of
the benchmark's prompt, so they are the vectors a top-k choice would really search with. The index
is built, measured and dropped; the engine itself always scans the whole vocabulary (exact).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

from rich.console import Console
from rich.table import Table

from gptsql.benchmarks.measure import PROMPT_LEN, prompt_tokens
from gptsql.server.db import Database


def final_hidden_states(conn, model: str, n: int) -> list[str]:
    """n final hidden states (pgvector text) along a greedy continuation of the benchmark's prompt."""
    run_id = conn.execute("select run_id from gptsql.start_run(%s, '', %s, record => false)",
                          [model, n]).fetchone()[0]
    model_id = conn.execute("select model_id from gptsql.run where id = %s", [run_id]).fetchone()[0]
    tokens, start, hidden = prompt_tokens(PROMPT_LEN), 0, []
    for _ in range(n):
        h = conn.execute("select gptsql.forward(%s, %s, %s)::text", [run_id, tokens, start]).fetchone()[0]
        hidden.append(h)
        start += len(tokens)
        tokens = [conn.execute("select token from gptsql.logits(%s, %s::vector) order by logit desc, token limit 1",
                               [model_id, h]).fetchone()[0]]
    conn.execute("select gptsql.finish_run(%s)", [run_id])
    return hidden


def build_index(db: Database, conn, model_id: int, column: str, opclass: str, n_embd: int, console: Console):
    """CREATE INDEX in a thread, its progress (pg_stat_progress_create_index) shown meanwhile."""
    ddl = (f"create index wte_{model_id}_hnsw on gptsql.wte_{model_id} "
           f"using hnsw (({column}::{opclass.split('_')[0]}({n_embd})) {opclass})")
    failure: list[BaseException] = []

    def create():
        with db.connect() as builder:
            try:
                builder.execute("set maintenance_work_mem = '1GB'")
                builder.execute(ddl)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

    began = time.perf_counter()
    worker = threading.Thread(target=create)
    worker.start()
    with console.status("building the HNSW index") as status:
        while worker.is_alive():
            row = conn.execute("select phase, tuples_done, tuples_total from pg_stat_progress_create_index "
                               "where relid = %s::regclass", [f"gptsql.wte_{model_id}"]).fetchone()
            if row:
                status.update(f"building the HNSW index: {row[0]} {row[1]:,}/{row[2]:,}")
            worker.join(0.5)
    if failure:
        raise failure[0]
    return time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a loaded model (default: build and load random:gpt2)")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--ef", default="40,200,1000", help="hnsw.ef_search values to measure")
    parser.add_argument("--dsn", help="a PostgreSQL server with pgvector (default: the CLI's, GPTSQL_DSN)")
    parser.add_argument("--data-dir", help="the embedded server's data directory (default: the CLI's)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)

    db = Database(dsn=args.dsn, data_dir=args.data_dir)
    conn = db.connect()
    name = args.model
    if name is None:
        from gptsql.loader.load import load
        from gptsql.loader.sources import random_model
        name = "hnsw-gpt2"
        with console.status("building and loading random:gpt2"):
            conn.execute("select gptsql.drop_model(%s)", [name])
            load(conn, random_model("gpt2"), name)
    model_id, n_embd, dtype = conn.execute("select id, n_embd, dtype from gptsql.model where name = %s",
                                           [name]).fetchone()
    column, opclass = ("w", "vector_ip_ops") if dtype == "float32" else ("h", "halfvec_ip_ops")
    cast = f"{column}::{opclass.split('_')[0]}({n_embd})"

    with console.status(f"{args.queries} final hidden states of {name}"):
        queries = final_hidden_states(conn, name, args.queries)
    exact_sql = (f"select array_agg(token order by logit desc, token) from "
                 f"(select token, logit from gptsql.logits(%s, %s::vector) order by logit desc, token limit 10) t")
    exact, exact_ms = [], []
    with console.status("exact top-10 by a scan of the vocabulary"):
        for q in queries:
            elapsed = time.perf_counter()
            exact.append(conn.execute(exact_sql, [model_id, q]).fetchone()[0])
            exact_ms.append((time.perf_counter() - elapsed) * 1000)

    conn.execute(f"drop index if exists gptsql.wte_{model_id}_hnsw")
    build_s = build_index(db, conn, model_id, column, opclass, n_embd, console)
    size = conn.execute("select pg_relation_size(%s::regclass)", [f"gptsql.wte_{model_id}_hnsw"]).fetchone()[0]

    table = Table(title=f"HNSW top-k on {name}'s token embeddings ({dtype}): index built in {build_s:.1f} s, "
                        f"{size / 2**20:.0f} MB; exact scan {statistics.median(exact_ms):.1f} ms per query")
    for column_name in ("hnsw.ef_search", "ms per query", "top-1 same as exact", "top-10 recall"):
        table.add_column(column_name, justify="right")
    approx_sql = (f"select array_agg(token) from (select token from gptsql.wte_{model_id} "
                  f"order by {cast} <#> %s::{opclass.split('_')[0]} limit 10) t")
    for ef in [int(e) for e in args.ef.split(",") if e]:
        same, hits, times = 0, 0, []
        with conn.transaction(), console.status(f"HNSW top-10 at ef_search {ef}"):
            conn.execute(f"set local hnsw.ef_search = {ef}")
            for q, best in zip(queries, exact):
                elapsed = time.perf_counter()
                found = conn.execute(approx_sql, [q]).fetchone()[0] or []
                times.append((time.perf_counter() - elapsed) * 1000)
                same += bool(found) and found[0] == best[0]
                hits += len(set(found) & set(best))
        table.add_row(str(ef), f"{statistics.median(times):.1f}", f"{same}/{len(queries)}",
                      f"{hits / (10 * len(queries)):.0%}")
    conn.execute(f"drop index gptsql.wte_{model_id}_hnsw")
    if args.model is None:
        conn.execute("select gptsql.drop_model(%s)", [name])
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
