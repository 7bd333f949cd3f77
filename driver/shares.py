"""How many backends a statement of this session runs on: the setting gptsql.shares, which the SQL
engine reads (sql/10_shares.sql: share 0 on the session's own backend, the others on backends it
opens through dblink). The loop in generation.py stays one statement per token either way."""
from __future__ import annotations

import os

import psycopg

from ..errors import UserError
from .generation import Generation


def default_workers() -> int | None:
    """GPTSQL_WORKERS, or None: the database's default (one share per core)."""
    raw = os.environ.get("GPTSQL_WORKERS")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"GPTSQL_WORKERS={raw!r} is not a number of workers; set it to 1 or more (1: one backend)")
    return value


def use_shares(conn: psycopg.Connection, workers: int | None, dsn: str | None = None) -> None:
    """Run this session's statements on `workers` backends (None: GPTSQL_WORKERS, else the
    database's default). With a password in the DSN, the other backends connect with it (a server
    that asks non-superusers for one)."""
    workers = workers if workers is not None else default_workers()
    if workers is not None:
        conn.execute("select set_config('gptsql.shares', %s, false)", [str(workers)])
    if dsn and psycopg.conninfo.conninfo_to_dict(dsn).get("password"):
        conn.execute("select set_config('gptsql.share_dsn', %s, false)", [dsn])


def start_generation(db, conn: psycopg.Connection, workers: int | None, *args, **kwargs) -> Generation:
    """A Generation over `workers` backends of the server (None: the default, one per core)."""
    use_shares(conn, workers, db.dsn())
    return Generation(conn, *args, **kwargs)


def start_prediction(db, conn: psycopg.Connection, workers: int | None, model: str | None, prompt: str) -> Generation:
    """A Generation whose predict(top_n) is gptsql.predict()'s distribution (rank, token, piece,
    probability, logit), recorded as the same run."""
    return start_generation(db, conn, workers, model, prompt, 0, record=True, kind="predict")
