"""gptsql generate --batch and gptsql score: the model over many texts, one JSON line each."""
from __future__ import annotations

import json
import math
import sys

import click

from ..errors import UserError
from ..service import models as service_models, options
from .common import Context, check_prompt, console, count, friendly, pass_ctx, workers_option

SETTINGS = {"max_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float), "seed": int}


def read_requests(lines, defaults: dict) -> list[dict]:
    """Each line a JSON string (the prompt) or object; settings it leaves out come from the options."""
    requests = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"line {i} is not JSON ({exc.msg}): give a JSON string or "
                            '{"prompt": "...", "max_tokens": ...} per line') from exc
        item = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UserError(f'line {i} has no "prompt" text: give a JSON string or {{"prompt": "..."}} per line')
        unknown = set(item) - set(SETTINGS) - {"prompt"}
        if unknown:
            raise UserError(f"line {i} has {', '.join(sorted(unknown))}, which is not a setting; "
                            f"use prompt, {', '.join(SETTINGS)}")
        for key, kind in SETTINGS.items():
            if key in item and (not isinstance(item[key], kind) or isinstance(item[key], bool)):
                raise UserError(f"line {i}: {key} is {item[key]!r}, not a number")
            if key in item:                 # the options' own rules, as -t, --top-p... check them
                try:
                    item[key] = options.RULES[key](item[key])
                except options.BadValue as exc:
                    raise UserError(f"line {i}: {key}: {exc}") from None
        check_prompt(item["prompt"])
        requests.append({**defaults, **item, "line": i})
    return requests


def progress_bar(total: int, what: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console(stderr=True), transient=True, disable=not sys.stderr.isatty())


def generate_batch(ctx: Context, lines, batch_size: int, model, defaults: dict, record: bool, workers) -> None:
    """gptsql generate --batch: one JSON line out per line in, in their order."""
    from ..driver import batch as driver
    from ..driver.shares import use_shares

    requests = read_requests(lines, defaults)
    service_models.ensure_model(ctx, model)
    service_models.before_generating(ctx, model)
    conn = ctx.conn
    use_shares(conn, workers, ctx.db.dsn())
    with progress_bar(sum(r["max_tokens"] for r in requests), "tokens") as bar:
        task = bar.add_task("", total=sum(r["max_tokens"] for r in requests))
        for first in range(0, len(requests), batch_size):
            batch = [driver.start(conn, model, r["line"], r, record) for r in requests[first:first + batch_size]]
            driver.generate(conn, batch, lambda n: bar.advance(task, n))
            for s in batch:
                click.echo(json.dumps({"line": s.n, "run": s.run, "prompt": s.prompt, "completion": driver.completion(s),
                                       "tokens": len(s.generated)}, ensure_ascii=False))


@click.command()
@click.argument("texts", nargs=-1)
@click.option("-m", "--model", help="Model name (default: the most recently loaded).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text, with each token's log-probability.")
@click.option("--batch-size", default=16, show_default=True, type=count(1), help="Texts scored in one pass.")
@workers_option
@pass_ctx
@friendly
def score(ctx: Context, texts, model, as_json, batch_size, workers):
    """How likely the model finds each TEXT ("-", or none: one text per line of stdin): the sum of
    log p(token | the tokens before it) over its tokens after the first, and the perplexity
    exp(-mean). Computed by gptsql.score(texts, model), all the texts' places in one pass."""
    from ..driver.shares import use_shares

    texts = list(texts) if texts and texts != ("-",) else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UserError("no text to score: give TEXT arguments, or lines on stdin")
    texts = [check_prompt(t) for t in texts]
    conn = ctx.conn
    use_shares(conn, workers, ctx.db.dsn())
    with progress_bar(len(texts), "texts") as bar:
        task = bar.add_task("", total=len(texts))
        for first in range(0, len(texts), batch_size):
            chunk = texts[first:first + batch_size]
            rows = conn.execute("select n, tokens, logprob, perplexity, token_logprobs from gptsql.score(%s, %s)",
                                [chunk, model]).fetchall()
            bar.advance(task, len(chunk))
            for n, tokens, logprob, perplexity, per_token in rows:
                text = chunk[n - 1]
                if as_json:
                    click.echo(json.dumps({"text": text, "tokens": tokens, "logprob": logprob, "perplexity": perplexity,
                                           "token_logprobs": per_token}, ensure_ascii=False))
                else:
                    shown = "n/a" if perplexity is None or math.isinf(perplexity) else f"{perplexity:.2f}"
                    click.echo(f"{logprob:.4f}\t{shown}\t{tokens}\t{text}")
