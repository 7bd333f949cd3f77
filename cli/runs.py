"""Recorded runs from the terminal: `gptsql runs list | show | drop`, `gptsql trace`, and the
pictures `gptsql attention` and `gptsql lens`.

Everything here reads the views of sql/09_runs.sql (gptsql.runs, run_tokens, step_candidates,
attention_weights, logit_lens); Python only lays out what they return.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import UserError
from ..service import models as service_models, options
from ..service.runs import recorded_places, resolve_run, run_info, run_model_id
from ..service.text import readable, run_pieces, token_pieces
from .common import (INT8, SEED, TEMPERATURE, TOP_P, OutFile, console, finishing, count, friendly, plural, print_tsv,
                     read_prompt, workers_meta_option)


def short(text: str | None, width: int = 40) -> str:
    text = (text or "").replace("\n", "↵")
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt_ms(value) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def fmt_p(value) -> str:
    return "—" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------- new runs
# Run lookup and checks, token text and the options' rules are the explorer's too: gptsql.service.
def record_prompt(ctx, prompt, model, max_tokens, temperature, top_k, top_p, seed, workers=None) -> int:
    """Generate from PROMPT with every activation recorded; returns the new run's id."""
    from ..driver.shares import start_generation

    prompt = read_prompt(prompt)
    service_models.ensure_model(ctx, model)
    service_models.before_generating(ctx, model)
    gen = start_generation(ctx.db, ctx.conn, workers, model, prompt, max_tokens, temperature, top_k, top_p, seed,
                           record=True)
    with finishing(gen):
        for _ in gen.steps():
            pass
    return gen.run_id


def run_source(default_tokens: int):
    """PROMPT (a new recorded run) or --run ID (an existing one), and the sampling options."""

    def decorate(fn):
        decorators = [
            click.argument("prompt", required=False),
            click.option("--run", "run", metavar="ID", help="Use a recorded run (an id, or 'latest') instead of a PROMPT."),
            click.option("-m", "--model", help="Model name (default: the most recently loaded)."),
            click.option("-n", "--max-tokens", default=default_tokens, show_default=True, type=count(1),
                         help="Tokens to generate after the prompt."),
            click.option("-t", "--temperature", default=0.0, show_default=True, type=TEMPERATURE,
                         help="Sampling temperature (0: greedy, the most probable token)."),
            click.option("--top-k", default=0, show_default=True, type=count(0),
                         help="Sample among the k most probable tokens (0: all)."),
            click.option("--top-p", default=1.0, show_default=True, type=TOP_P,
                         help="Sample among the most probable tokens whose mass reaches p."),
            click.option("--seed", type=SEED, help="An integer: same seed, same text."),
            workers_meta_option,
        ]
        for option in reversed(decorators):
            fn = option(fn)
        return fn

    return decorate


def source_run(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed) -> int:
    if (prompt is None) == (run is None):
        raise UserError("give a PROMPT to run, or --run ID to explore a recorded run (not both)")
    if run is not None:
        return resolve_run(ctx.conn, run)
    return record_prompt(ctx, prompt, model, max_tokens, temperature, top_k, top_p, seed,
                         click.get_current_context().meta.get("workers"))


# ---------------------------------------------------------------------------------------- runs
@click.group()
def runs():
    """Recorded runs: list, show, drop (every generation and prediction is one).

    \b
      gptsql runs list                 the newest runs
      gptsql runs show latest          parameters, text, per-token probabilities, timings
      gptsql runs drop 3 4             remove runs and everything they recorded
      gptsql runs drop --older-than 7d
    """


@runs.command("list")
@click.option("--limit", default=20, show_default=True, type=count(1), help="How many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@click.pass_obj
@friendly
def list_runs(ctx, limit, as_json):
    """The newest runs: model, status, prompt, text, tokens, speed."""
    cur = ctx.conn.execute("select * from gptsql.runs order by run desc limit %s", [limit])
    names = [c.name for c in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str, ensure_ascii=False))
        return
    if not rows:
        click.echo("no runs yet; start one with: gptsql generate \"Happy New Year! I wish\"")
        return
    if not sys.stdout.isatty():     # scripts read it: whole prompts and texts, tab-separated
        print_tsv(["run", "model", "kind", "status", "recorded", "started", "prompt_tokens", "generated_tokens",
                   "ms_per_token", "prompt", "generated"],
                  [[str(r["run"]), r["model"], r["kind"], r["status"], "yes" if r["recorded"] else "no",
                    r["started_at"].astimezone().isoformat(timespec="seconds"), str(r["prompt_tokens"]),
                    str(r["generated_tokens"]), "" if r["decode_ms_per_token"] is None else f"{r['decode_ms_per_token']:.1f}",
                    r["prompt"], r["generated_text"] or ""] for r in rows])
        return
    print_runs(console(), rows)


def print_runs(out, rows: list[dict]) -> None:
    """At a terminal: one column per field and the text beside them when there is room; otherwise
    the fields above the text, wrapped. Model names are never cut."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = [[str(r["run"]), r["model"], r["status"] + ("" if r["recorded"] else "*"),
              r["started_at"].astimezone().strftime("%m-%d %H:%M"), f"{r['prompt_tokens']}+{r['generated_tokens']}",
              "—" if r["decode_ms_per_token"] is None else f"{r['decode_ms_per_token']:.0f}"] for r in rows]
    headers = ["run", "model", "status", "started", "tokens", "ms/tok"]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, name in enumerate(headers)]
    fixed = sum(widths) + 3 * (len(headers) + 1) + 1
    wide = out.width - fixed >= 16
    caption = "* not recorded (--no-record)" if any(not r["recorded"] for r in rows) else None
    table = Table(title="gptsql runs, newest first", caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    if wide:                        # one column per field, the text in what is left
        room = out.width - fixed
        for i, (name, width) in enumerate(zip(headers, widths)):
            table.add_column(name, no_wrap=True, width=width, justify="right" if i in (0, 4, 5) else "left")
    else:                           # narrow (or a long model name): the fields above the text, wrapped, never cut
        room = max(16, out.width - widths[0] - 7)
        table.add_column("run", no_wrap=True, width=widths[0], justify="right")
    table.add_column("prompt + generated" if wide else
                     "model · status · started · tokens · ms/tok\nprompt + generated", overflow="fold", width=room)
    budget = 3 * room - 1           # up to 3 lines of text; piped: whole
    for r, c in zip(rows, cells):
        text = Text("[predict] " if r["kind"] == "predict" else "", style="dim")
        generated = short(r["generated_text"], max(room, budget - len(text) - len(r["prompt"] or "")))
        text.append(short(r["prompt"], max(1, budget - len(text) - len(generated))))
        text.append(generated, style="green")
        if wide:
            table.add_row(*c, text)
        else:
            fields = Text()
            fields.append(" · ".join([c[1], c[2], c[3], c[4] + " tokens", c[5] + " ms/tok"]) + "\n", style="bold")
            table.add_row(c[0], fields.append_text(text))
    out.print(table)


@runs.command("show")
@click.argument("run", default="latest")
@click.pass_obj
@friendly
def show_run(ctx, run):
    """A run's parameters, its text, the probability of each token, and timings (RUN: an id or 'latest')."""
    from rich.table import Table
    from rich.text import Text

    conn = ctx.conn
    run_id = resolve_run(conn, run)
    r = run_info(conn, run_id)
    out = console()
    params = Table.grid(padding=(0, 2))
    params.add_column(style="bold")
    params.add_column()
    sampling = "none: the next-token table" if r["kind"] == "predict" else "greedy" if r["temperature"] == 0 else (
        f"temperature {r['temperature']:g}, top-k {r['top_k'] or 'all'}, top-p {r['top_p']:g}, "
        f"seed {'random' if r['seed'] is None else str(r['seed'])}")
    recorded = conn.execute(
        """select (select count(*) from gptsql.residual where run_id = %(r)s),
                  (select count(*) from gptsql.attention_row where run_id = %(r)s),
                  (select count(*) from gptsql.step_logit where run_id = %(r)s)""", {"r": run_id}).fetchone()
    for key, value in [
        ("run", str(run_id)), ("model", r["model"]), ("kind", r["kind"]),
        ("status", r["status"] + (f": {r['error']}" if r["error"] else "")),
        ("sampling", sampling), ("max tokens", str(r["max_tokens"])),
        ("tokens", f"{r['prompt_tokens']} prompt + {r['generated_tokens']} generated"),
        ("started", r["started_at"].astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("timings", f"total {fmt_ms(r['total_ms'])}, prefill {fmt_ms(r['prefill_ms'])}, "
                    f"decode {fmt_ms(r['decode_ms_per_token'])} per token"
                    + (f", {r['tokens_per_second']:.1f} tokens/s" if r["tokens_per_second"] else "")),
        ("recorded", (f"{recorded[0]} residual rows, {recorded[1]} attention rows, {recorded[2]} candidates"
                      if r["recorded"] else "no (--no-record): tokens only")),
    ]:
        params.add_row(key, value)
    out.print(params)
    text = Text()
    text.append(r["prompt"])
    text.append(r["generated_text"] or "", style="bold green")
    out.print()
    out.print(text)
    out.print()
    tokens = Table("place", "token", "piece", "", "probability", "rank", "step ms",
                   title="tokens (probability: the model's, when the token was chosen)")
    readable_pieces = run_pieces(conn, run_id)      # part of a character: its bytes, <e4 bd>
    for place, token, piece, is_prompt, p, rank, ms in conn.execute(
            """select place, token, piece, is_prompt, probability, rank, elapsed_ms
               from gptsql.run_tokens where run = %s order by place""", [run_id]):
        tokens.add_row(str(place), str(token), repr(readable_pieces.get(place, piece)),
                       "prompt" if is_prompt else "generated" if p is not None or rank is not None else "fed",
                       "" if is_prompt else fmt_p(p), "" if rank is None else str(rank),
                       "" if ms is None else f"{ms:.1f}")
    out.print(tokens)
    if r["kind"] == "predict":
        table = Table("rank", "token", "piece", "probability", "logit", title="next-token candidates")
        candidates = conn.execute("""select rank, token, piece, probability, logit from gptsql.step_candidates
                                     where run = %s order by rank""", [run_id]).fetchall()
        readable_tokens = token_pieces(conn, run_model_id(conn, run_id), [c[1] for c in candidates])
        for rank, token, piece, p, logit in candidates:
            table.add_row(str(rank), str(token), repr(readable_tokens.get(token, piece)), fmt_p(p), f"{logit:.4f}")
        out.print(table)


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days",
         "w": "weeks"}
SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}
NO_RUN_IS_OLDER = 1000 * 365 * 86400   # seconds: an age past this (or past PostgreSQL's dates) finds no run


def parse_age(text: str) -> str:
    """'7d', '12h', '30m', '2w', '45s' -> a PostgreSQL interval literal."""
    m = DURATION.match(text)
    if not m:
        raise UserError(f"--older-than wants an age like 30m, 12h, 7d or 2w, not {text!r}")
    return f"{m.group(1)} {UNITS[m.group(2)]}"


FEW_RUNS = 5   # a drop of more runs than this asks first (or needs --yes)


@runs.command("drop")
@click.argument("run_ids", nargs=-1, type=count(1, INT8), metavar="[ID]...")
@click.option("--older-than", metavar="AGE", help="Drop every finished run started longer ago than AGE (30m, 12h, 7d, 2w).")
@click.option("-y", "--yes", is_flag=True, help=f"Skip the question asked when more than {FEW_RUNS} runs would go.")
@click.pass_obj
@friendly
def drop_runs(ctx, run_ids, older_than, yes):
    """Remove runs and everything they recorded (tokens, residual stream, attention, candidates).

    A drop of more than a few runs asks first (--yes when not at a terminal); a running run is never dropped.
    """
    if bool(run_ids) == bool(older_than):
        raise UserError("give run ids, or --older-than AGE (e.g. gptsql runs drop --older-than 7d)")
    conn = ctx.conn
    if older_than:
        age = parse_age(older_than)
        number, unit = age.split()
        ids = [] if float(number) * SECONDS[unit] > NO_RUN_IS_OLDER else [r[0] for r in conn.execute(
            """select id from gptsql.run
               where started_at < now() - %s::interval and status <> 'running' order by id""", [age])]
    else:
        ids = sorted(set(run_ids))
        found = {r[0]: r[1] for r in conn.execute("select id, status from gptsql.run where id = any(%s)", [ids])}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(f"there {'is no run' if len(missing) == 1 else 'are no runs'} {', '.join(map(str, missing))}, "
                            "so nothing was dropped; "
                            "list the runs with: gptsql runs list")
    if len(ids) > FEW_RUNS and not yes:
        what = f"{len(ids)} runs ({ids[0]} to {ids[-1]}) and everything they recorded"
        if not sys.stdin.isatty():
            raise UserError(f"this drops {what}; add --yes to confirm when not at a terminal")
        if not click.confirm(f"Really drop {what}?"):
            click.echo("nothing dropped")
            return
    with conn.transaction():
        running = [r for r, in conn.execute("select id from gptsql.run where id = any(%s) and status = 'running' "
                                            "order by id", [ids])]
        if running:
            raise UserError(f"run {', '.join(map(str, running))} is still running; stop it first (Ctrl-C)")
        conn.execute("select gptsql.forget_cache(%s::bigint[])", [ids])   # no foreign key: scratch
        conn.execute("delete from gptsql.run where id = any(%s)", [ids])           # the rest cascades
    if not ids:
        click.echo(f"no finished runs older than {older_than}")
    else:
        click.echo(f"dropped {len(ids)} run{'s' if len(ids) != 1 else ''}: {', '.join(map(str, ids))}")


# --------------------------------------------------------------------------------------- trace
@click.command()
@run_source(default_tokens=5)
@click.option("--top", "top_n", default=5, show_default=True, type=count(1, 10),
              help="Candidates per step and per block.")
@click.option("--place", type=count(0), help="Place of the logit lens (default: the last one the model read).")
@click.pass_obj
@friendly
def trace(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed, top_n, place):
    """Look inside a run: the logit lens per block, and the top candidates at each step.

    Generates from PROMPT (greedy unless -t; every activation recorded), or reads --run ID, then
    prints what each block would predict at the last place it read (each block's residual
    stream through the final layer norm and the token embeddings), and the most probable
    candidates at every generated step with the one the run took.
    """
    from rich.table import Table
    from rich.text import Text

    conn = ctx.conn
    run_id = source_run(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed)
    n_places = recorded_places(conn, run_id)
    r = run_info(conn, run_id)
    names = run_pieces(conn, run_id)
    place = n_places - 1 if place is None else options.place(place, n_places, run_id, "--place")
    out = console()
    text = Text(f"run {run_id} ({r['model']}): ")
    text.append(r["prompt"])
    text.append(r["generated_text"] or "", style="bold green")
    out.print(text)

    title = f"Logit lens at place {place} (after {names.get(place)!r}): what the model would say after each block"
    if place + 1 in names:
        title += f"; the run went on with {names[place + 1]!r}"
    lens = Table("block", *[f"#{i}" for i in range(1, top_n + 1)], title=title)
    by_block: dict[int, list] = {}
    lens_rows = conn.execute("""select block, rank, token, predicted_piece, probability, is_next
                                from gptsql.logit_lens(%s, %s, %s) order by block, rank""",
                             [run_id, top_n, place]).fetchall()
    step_rows = conn.execute("""select step, place, rank, token, piece, probability, chosen from gptsql.step_candidates
                                where run = %s and rank <= %s order by step, rank""", [run_id, top_n]).fetchall()
    readable_tokens = token_pieces(conn, run_model_id(conn, run_id), [r[2] for r in lens_rows] + [r[3] for r in step_rows])
    for block, rank, token, piece, p, is_next in lens_rows:
        cell = Text(f"{readable_tokens.get(token, piece)!r}\n{p:.3f}", style="bold green" if is_next else "")
        by_block.setdefault(block, []).append(cell)
    for block, cells in sorted(by_block.items()):
        lens.add_row(str(block), *cells)
    out.print(lens)

    steps = Table("step", "after", "chosen", *[f"#{i}" for i in range(1, top_n + 1)],
                  title="Top candidates at each step (the chosen one in green)")
    rows: dict[int, dict] = {}
    for step, at, rank, token, piece, p, chosen in step_rows:
        row = rows.setdefault(step, {"after": names.get(at - 1), "cells": []})
        row["cells"].append(Text(f"{readable_tokens.get(token, piece)!r}\n{p:.3f}", style="bold green" if chosen else ""))
    chosen_tokens = {at: (names.get(at, piece), p) for at, piece, p in conn.execute(
        "select place, piece, probability from gptsql.run_tokens where run = %s and not is_prompt", [run_id])}
    for step, row in sorted(rows.items()):
        piece, p = chosen_tokens.get(r["prompt_tokens"] - 1 + step, (None, None))
        steps.add_row(str(step), repr(row["after"]), "—" if piece is None else f"{piece!r}\n{fmt_p(p) if p is None else f'{p:.3f}'}", *row["cells"])
    out.print(steps)


# ------------------------------------------------------------------------------------ pictures
def subtitle(r: dict) -> str:
    return f"run {r['run']} ({r['model']}): {(r['prompt'] + (r['generated_text'] or '')).replace(chr(10), '↵')!r}"


def model_shape(conn, model_id: int, block: int | None = None, head: int | None = None) -> tuple[int, int]:
    """(n_layer, n_head) of the model; fails on a block or head it does not have."""
    n_layer, n_head = conn.execute("select n_layer, n_head from gptsql.model where id = %s", [model_id]).fetchone()
    if block is not None:
        options.block(block, n_layer, "--block")
    if head is not None:
        options.head(head, n_head, "--head")
    return n_layer, n_head


LENS_PLACES = 64        # the lens picture's default window: the last places of a longer run


def window(spec: str | None, n: int, run_id: int, default_last: int | None = None) -> range:
    """--places A:B (as in Python: A to B - 1; A: or :B leave an end open) within the n places the
    run recorded; without it every place, or the last `default_last` of them."""
    if spec is None:
        return range(max(0, n - default_last) if default_last else 0, n)
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", spec)
    try:
        if not m:
            raise options.BadValue(spec)
        a, b = int(m.group(1) or 0), int(m.group(2) or n)
        return options.places(a, b - 1, n, run_id)
    except options.BadValue:
        raise UserError(f"--places {spec!r}: run {run_id} recorded places 0 to {n - 1}; give A:B with "
                        f"0 <= A < B <= {n} (places A to B - 1; e.g. {max(0, n - 40)}:{n}, or {max(0, n - 40)}: for the end)") from None


def window_note(places: range, n: int) -> str:
    return "" if len(places) == n else f", places {places.start}-{places.stop - 1} of {n} (--places A:B for others)"


def draw_attention(conn, run_id: int, block: int, head: int | None, out: Path, places: str | None = None):
    """The attention heatmap of a recorded run: one head, or every head (head None) as a grid; of
    every place, or of a window (--places A:B)."""
    from ..plots import figures as plots

    _, n_head = model_shape(conn, run_model_id(conn, run_id), block, head)
    n = recorded_places(conn, run_id)
    shown = window(places, n, run_id)
    a, size = shown.start, len(shown)
    heads = list(range(n_head)) if head is None else [head]
    matrices = {h: np.full((size, size), np.nan) for h in heads}      # NaN: masked (a key after the query)
    for h, q, k, w in conn.execute(
            """select head, query_place, key_place, weight from gptsql.attention_weights
               where run = %s and block = %s and head = any(%s)
                 and query_place between %s and %s and key_place >= %s""",
            [run_id, block, heads, shown.start, shown.stop - 1, shown.start]):
        matrices[h][q - a, k - a] = w
    names = run_pieces(conn, run_id)
    which = f"head {head}" if head is not None else f"all {n_head} heads"
    picture = plots.attention([names.get(p) for p in shown], matrices, block, Path(out),
                              f"Attention weights of block {block}, {which}{window_note(shown, n)}",
                              subtitle(run_info(conn, run_id)), first=a)
    picture.note = window_note(shown, n)
    return picture


def draw_lens(conn, run_id: int, out: Path, places: str | None = None):
    """The logit lens of a recorded run: blocks by places, the top token and its probability; the
    last LENS_PLACES places of a longer run unless --places says which."""
    from ..plots import figures as plots

    n = recorded_places(conn, run_id)
    shown = window(places, n, run_id, default_last=LENS_PLACES)
    model_id = run_model_id(conn, run_id)
    n_layer, _ = model_shape(conn, model_id)
    top = [[""] * len(shown) for _ in range(n_layer)]
    probability = np.zeros((n_layer, len(shown)))
    is_next = np.zeros((n_layer, len(shown)), dtype=bool)
    # one place at a time when it is a window: the lens scans the vocabulary once per block and place
    calls = [[run_id, model_id, None]] if len(shown) == n else [[run_id, model_id, p] for p in shown]
    for args in calls:
        for block, place, raw, p, hit in conn.execute(
                """select l.block, l.place, tok.bytes, l.probability, l.is_next from gptsql.logit_lens(%s, 1, %s) l
                   join gptsql.token tok on tok.model_id = %s and tok.token = l.token""", [args[0], args[2], args[1]]):
            x = place - shown.start
            top[block][x], probability[block, x], is_next[block, x] = readable(raw), p, hit
    names = run_pieces(conn, run_id)
    picture = plots.lens([names.get(p) for p in shown], [names.get(p + 1) for p in shown], top, probability,
                         is_next, Path(out), "Logit lens: the most probable next token after each block, and its "
                         f"probability{window_note(shown, n)}", subtitle(run_info(conn, run_id)), first=shown.start)
    picture.note = window_note(shown, n)
    return picture


@click.command()
@run_source(default_tokens=1)
@click.option("--block", "-b", default=0, show_default=True, type=count(0), help="Which block.")
@click.option("--head", default="all", show_default=True, help="Which head (a number), or 'all' for a grid.")
@click.option("--out", "-o", default="attention.png", show_default=True, type=OutFile(),
              help="PNG file to write.")
@click.option("--places", metavar="A:B", help="Draw places A to B - 1 only (A: to the end; default: every place).")
@click.pass_obj
@friendly
def attention(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed, block, head, out, places):
    """Heatmap of attention weights: which earlier token each place looked at.

    Runs PROMPT (-n tokens, greedy; activations recorded) or reads --run ID, and draws for BLOCK
    and HEAD (or every head) a grid of query places (rows) by key places (columns), with the tokens
    on both axes. The causal mask leaves the upper triangle empty.
    """
    if head != "all" and not re.fullmatch(r"\d+", head):
        raise UserError(f"--head is a head number or 'all', not {head!r}")
    head = None if head == "all" else int(head)
    if run is None and prompt is not None:      # a bad block or head fails before the prompt runs
        model_shape(ctx.conn, service_models.model_id(ctx.conn, model), block, head)
    run_id = source_run(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed)
    picture = draw_attention(ctx.conn, run_id, block, head, Path(out), places)
    click.echo(f"wrote {picture.path} ({picture.width}×{picture.height} px): "
               f"{picture.title.removesuffix(picture.note).lower()}, "
               f"{plural(len(picture.panels[0].xlabels), 'token')} of run {run_id}{picture.note}")


@click.command()
@run_source(default_tokens=1)
@click.option("--out", "-o", default="lens.png", show_default=True, type=OutFile(),
              help="PNG file to write.")
@click.option("--places", metavar="A:B",
              help=f"Draw places A to B - 1 only (A: to the end; default: the last {LENS_PLACES}).")
@click.pass_obj
@friendly
def lens(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed, out, places):
    """Picture of the logit lens: the top token after each block, at each place.

    Runs PROMPT (-n tokens, greedy; activations recorded) or reads --run ID, and draws blocks
    (rows) by places (columns); each cell holds the token the model would predict if it stopped
    after that block, and its probability. Cells that guessed the run's next token are boxed.
    """
    run_id = source_run(ctx, prompt, run, model, max_tokens, temperature, top_k, top_p, seed)
    picture = draw_lens(ctx.conn, run_id, Path(out), places)
    panel = picture.panels[0]
    columns = sum(len(p.xlabels) for p in picture.panels)
    rows = f" in {len(picture.panels)} rows" if len(picture.panels) > 1 else ""
    click.echo(f"wrote {picture.path} ({picture.width}×{picture.height} px): {len(panel.ylabels)} blocks × "
               f"{columns} places{rows} of run {run_id}{picture.note}")
