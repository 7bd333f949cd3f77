"""A user's way into gptsql: a Database and the one connection the work runs on."""
from __future__ import annotations

import sys
from typing import Callable

import psycopg

from ..server.db import Database

Say = Callable[[str], None]


def say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Session:
    """The connection is opened on first use (starting the embedded server and installing the
    engine if need be) and opened anew after reconnect(), when the embedded server restarted.
    `say` gets the lines meant for the user: what a command does on its own (loading the default
    model, growing shared_buffers) and the engine's notices (why a statement ran on one backend)."""

    def __init__(self, db: Database, say: Say = say_stderr):
        self.db = db
        self.say = say
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self.db.connect()
            self._conn.add_notice_handler(self.engine_notice)
        return self._conn

    def reconnect(self) -> None:
        """After the embedded server restarted: the next use of .conn connects anew."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def engine_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        """The engine's own notices (they start with 'gptsql '), one line each; others are not the user's."""
        if (diag.message_primary or "").startswith("gptsql "):
            self.say(diag.message_primary)
