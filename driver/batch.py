"""Many prompts generated together: each a run of its own (its settings, KV cache and stop), all
stepped by one gptsql.steps statement per token, so that every step reads the weights once for the
whole batch (sql/12_batch.sql has the same loop in SQL: gptsql.generate_runs)."""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Callable

import psycopg


@dataclass
class Sequence:
    n: int                       # its line in the input, from 1
    prompt: str
    run: int
    left: int                    # tokens it may still generate
    eot: int
    fed: list[int]
    generated: list[int] = field(default_factory=list)
    text: bytes = b""


def start(conn: psycopg.Connection, model: str | None, n: int, request: dict, record: bool) -> Sequence:
    """A run for one request: {"prompt": ..., and any of "max_tokens", "temperature", "top_k",
    "top_p", "seed"}."""
    run, tokens, eot = conn.execute(
        """select run_id, tokens, eot from gptsql.start_run(%s, %s, %s, %s, %s, %s, %s, %s)""",
        [model, request["prompt"], request["max_tokens"], request["temperature"], request["top_k"], request["top_p"],
         request["seed"], record]).fetchone()
    return Sequence(n, request["prompt"], run, request["max_tokens"], eot, list(tokens))


def generate(conn: psycopg.Connection, batch: list[Sequence], on_step: Callable[[int], None] = lambda n: None) -> None:
    """Step the batch's runs until each has its max_tokens or ends its text, then finish them."""
    live = [s for s in batch if s.left > 0]
    try:
        while live:
            rows = conn.execute("select run, token, bytes from gptsql.steps(%s, %s, %s)",
                                [[s.run for s in live], [t for s in live for t in s.fed], [len(s.fed) for s in live]],
                                prepare=True).fetchall()
            going = []
            for s, (_run, token, raw) in zip(live, rows):
                s.left -= 1
                s.generated.append(token)
                if token != s.eot:
                    s.text += bytes(raw)
                    if s.left > 0:
                        s.fed = [token]
                        going.append(s)
            on_step(len(live))
            live = going
        for s in batch:
            conn.execute("select gptsql.finish_run(%s)", [s.run])
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        for s in batch:
            try:
                conn.execute("select gptsql.finish_run(%s, %s, %s)", [s.run, status, str(exc) or None])
            except psycopg.Error:
                break
        raise


def completion(s: Sequence) -> str:
    return codecs.decode(s.text, "utf-8", errors="replace")
