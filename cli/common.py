"""What every command shares: the connection it works on, one-line errors, reading a prompt."""
from __future__ import annotations

import functools
import sys

import click
import psycopg

from ..errors import UserError
from ..server.db import Database, first_line


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def db_error_message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag and diag.message_primary else None) or first_line(exc)
    hint = diag.message_hint if diag else None
    return f"{primary} ({hint})" if hint else primary


def friendly(fn):
    """Every failure a user can act on becomes one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except psycopg.OperationalError as exc:
            fail(f"database connection failed: {db_error_message(exc)}")
        except psycopg.Error as exc:
            fail(db_error_message(exc))

    return wrapper


class Context:
    def __init__(self, dsn: str | None, data_dir: str | None):
        self.db = Database(dsn=dsn, data_dir=data_dir)
        self._conn = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self.db.connect()
        return self._conn

    def reconnect(self) -> None:
        """After the embedded server restarted: the next use of .conn connects anew."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None


pass_ctx = click.make_pass_decorator(Context)


def read_prompt(prompt: str) -> str:
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"standard input is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                            "convert it, e.g. iconv -t UTF-8") from exc
    if "\x00" in prompt:
        raise UserError(f"the prompt contains a NUL character (U+0000) at offset {prompt.index(chr(0))}; "
                        "PostgreSQL text cannot hold it: remove it")
    return prompt


WORKERS_HELP = ("Backends that share each step's heads, MLP units and vocabulary "
                "(1: one backend; default: one per core).")


def workers_option(fn):
    """--workers N: backends sharing one generation (1: one backend; default: one per core)."""
    return click.option("--workers", type=click.IntRange(min=1), default=None, envvar="GPTSQL_WORKERS",
                        show_envvar=True, help=WORKERS_HELP)(fn)


def workers_meta_option(fn):
    """--workers for commands that pass it on through click's context (ctx.meta["workers"])."""
    return click.option("--workers", type=click.IntRange(min=1), default=None, envvar="GPTSQL_WORKERS",
                        show_envvar=True, expose_value=False, help=WORKERS_HELP,
                        callback=lambda c, _p, value: c.meta.__setitem__("workers", value))(fn)


class PrefillBar:
    """A progress bar on stderr (a terminal only) while a long prompt is read: it appears once the
    prefill has taken a second, counts prompt tokens with an estimate of the time left, and goes
    when the first new token arrives. Set as a Generation's on_prefill."""

    AFTER_S = 1.0

    def __init__(self):
        import time

        self.clock = time.monotonic
        self.began = self.clock()
        self.progress = self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None and done < total and self.clock() - self.began >= self.AFTER_S \
                and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("reading the prompt"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("tokens"), TimeElapsedColumn(), TextColumn("left"),
                                     TimeRemainingColumn(), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("prefill", total=total)
        if self.progress is not None:
            self.progress.update(self.task, completed=done)
            if done >= total:
                self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
