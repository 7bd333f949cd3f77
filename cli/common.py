"""What every command shares: the connection it works on, one-line errors, reading a prompt."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click
import psycopg

from ..errors import UserError
from ..server.db import Database
from ..service import options
from ..service.runs import NotRecorded
from ..service.session import Session
from ..service.text import check_prompt, connection_lost, db_error_message, utf8_problem


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def friendly(fn):
    """Every failure a user can act on becomes one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotRecorded as exc:      # the CLI names its flag
            fail(f"run {exc.run_id} was generated with --no-record: it kept no activations; "
                 "run the prompt again without --no-record")
        except UserError as exc:
            fail(str(exc))
        except psycopg.OperationalError as exc:
            lost = connection_lost(exc)
            fail(f"database connection failed: {db_error_message(exc)}" if lost else db_error_message(exc))
        except psycopg.Error as exc:
            fail(db_error_message(exc))

    return wrapper


class Context(Session):
    """The CLI's session: its database from --dsn / --data-dir, its lines for the user on stderr."""

    def __init__(self, dsn: str | None, data_dir: str | None):
        super().__init__(Database(dsn=dsn, data_dir=data_dir), say=lambda line: click.echo(line, err=True))


pass_ctx = click.make_pass_decorator(Context)


PIPED_WIDTH = 1_000_000    # columns of rich's output when not at a terminal: nothing cut, nothing wrapped


def console(stderr: bool = False):
    """Rich output for data: names, prompts and pieces are printed as they are, never read as
    markup ('[/bold]') or emoji codes (':smile:'). Piped (and COLUMNS unset), tables and texts are
    as wide as their values: at rich's default 80 columns a long piece was cut ('====…') and a text
    wrapped where a grep would look for it."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, width=width)


def plural(n: int, word: str) -> str:
    """'1 token', '2 tokens'."""
    return f"{n} {word}{'s' * (n != 1)}"


def print_tsv(headers: list[str], cells: list[list[str]]) -> None:
    """Piped output: a header line and one line per row, tabs between whole values (tabs and
    newlines inside a value made visible, so each row stays one line)."""
    for row in [headers, *cells]:
        click.echo("\t".join(v.replace("\t", "⇥").replace("\n", "↵") for v in row))


INT4, INT8 = options.INT4, options.INT8


class Checked(click.ParamType):
    """An option checked by its rule in gptsql.service.options (the explorer checks its fields by
    the same rules); click puts the option's name before the rule's message."""

    def __init__(self, rule, name: str):
        self.rule, self.name = rule, name

    def convert(self, value, param, ctx):
        try:
            return self.rule(value)
        except options.BadValue as exc:
            self.fail(str(exc), param, ctx)


def count(minimum: int = 0, maximum: int = INT4) -> Checked:
    """An integer option that fits the SQL int it becomes: out of range is one line naming the
    value and the range, not 'function ... (bigint) does not exist' from the server."""
    return Checked(lambda value: options.whole(value, minimum, maximum), "integer")


SEED = Checked(options.seed, "integer")
TEMPERATURE = Checked(options.temperature, "float")
TOP_P = Checked(options.top_p, "float")


class OutFile(click.Path):
    """A file to write: its folder must exist (no folders are made, even as root), checked before
    any work starts; writing it can still fail later (see write_failed)."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        path = Path(super().convert(value, param, ctx))
        folder = path.parent
        if not folder.is_dir():
            self.fail(f"the folder {str(folder)!r} does not exist (or is not a folder): create it first, "
                      "or write elsewhere", param, ctx)
        try:                    # can it be written? (a new file is made and removed; an old one kept)
            if path.exists():
                if not path.is_file() or not os.access(path, os.W_OK):
                    raise PermissionError(13, "not a writable file")
            else:
                path.open("x").close()
                path.unlink()
        except OSError as exc:
            self.fail(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose another path", param, ctx)
        return str(path)


def write_failed(path, exc: OSError) -> UserError:
    return UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose another path")


class IntList(click.ParamType):
    """Comma-separated positive integers: --contexts 16,128,512."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts or not all(p.isdigit() and 0 < int(p) <= INT4 for p in parts):
            self.fail(f"{value!r} is not a list of positive whole numbers separated by commas, "
                      "like 16,128,512", param, ctx)
        return [int(p) for p in parts]


def shown_arg(value: str) -> str:
    """An argument as the user typed it, bad bytes as \\xff, cut to 40 characters."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:          # a surrogate no byte became (not from argv): shown as \udXXX
        raw = value.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "'" + (text if len(text) <= 40 else text[:39] + "…") + "'"


def check_utf8(args: list[str]) -> None:
    """Every argument reaches SQL (or a path) as UTF-8: one line naming the first bad one."""
    for arg in args:
        problem = utf8_problem(arg)
        if problem:
            raise UserError(f"the argument {shown_arg(arg)} is not UTF-8 text ({problem}); "
                            "gptsql takes UTF-8 text: convert it, e.g. with iconv -t UTF-8")


def check_utf8_environment() -> None:
    """GPTSQL_* variables become a DSN, a path or a number the way arguments do (and Python decodes
    them the same way): one line naming the first that is not UTF-8, before anything runs."""
    for name, value in sorted(os.environ.items()):
        problem = utf8_problem(value) if name.startswith("GPTSQL_") else None
        if problem:
            raise UserError(f"the environment variable {name}={shown_arg(value)} is not UTF-8 text ({problem}); "
                            f"set it to UTF-8 text, or unset it (unset {name})")


def read_prompt(prompt: str) -> str:
    """A command's prompt argument: "-" reads standard input."""
    check_utf8([prompt])
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"standard input is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                            "convert it, e.g. iconv -t UTF-8") from exc
    return check_prompt(prompt)


WORKERS_HELP = ("Backends that share each step's heads, MLP units and vocabulary "
                "(1: one backend; default: one per core while the server has half its connections free).")


WORKERS = Checked(options.workers, "integer")


def workers_option(fn):
    """--workers N: backends sharing one generation (1: one backend; default: one per core)."""
    return click.option("--workers", type=WORKERS, default=None, envvar="GPTSQL_WORKERS",
                        show_envvar=True, help=WORKERS_HELP)(fn)


def sampling_options(temperature: float, top_p: float, same: str):
    """-t, --top-k, --top-p and --seed, with a command's own defaults (SAME: what a seed repeats)."""
    chosen = [
        click.option("-t", "--temperature", default=temperature, show_default=True, type=TEMPERATURE,
                     help="Sampling temperature: 0 is greedy (deterministic); higher is more random."),
        click.option("--top-k", default=0, show_default=True, type=count(0),
                     help="Sample only among the k most probable tokens (0: all)."),
        click.option("--top-p", default=top_p, show_default=True, type=TOP_P,
                     help="Sample only among the most probable tokens whose mass reaches p."),
        click.option("--seed", type=SEED, help=f"An integer: same seed, same {same}."),
    ]

    def decorate(fn):
        for option in reversed(chosen):
            fn = option(fn)
        return fn
    return decorate


def workers_meta_option(fn):
    """--workers for commands that pass it on through click's context (ctx.meta["workers"])."""
    return click.option("--workers", type=WORKERS, default=None, envvar="GPTSQL_WORKERS",
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


@contextlib.contextmanager
def finishing(gen, newline: bool = False):
    """Around a Generation's loop: shows the prefill bar; on Ctrl-C or an error it takes the bar
    away, ends the line of text if `newline` (after Ctrl-C, with the recorded tokens it had not
    shown), marks the run interrupted or failed, and re-raises. Output closed under the stream
    (`| head`: EPIPE, Python ignores SIGPIPE) is an interrupt too; click then exits quietly."""
    bar = gen.on_prefill = PrefillBar()
    try:
        yield
    except BrokenPipeError:
        bar.close()
        gen.stop("interrupted")
        raise
    except (KeyboardInterrupt, psycopg.Error, UserError) as exc:
        bar.close()
        if newline:
            click.echo(gen.unstreamed() if isinstance(exc, KeyboardInterrupt) else "")
        if isinstance(exc, KeyboardInterrupt):
            gen.stop("interrupted")
        else:
            gen.stop("failed", str(exc))
        raise
