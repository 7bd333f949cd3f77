"""`gptsql serve`: the explorer, a local web app over the same database (the app is gptsql.web)."""
from __future__ import annotations

import click

from .common import Context, friendly, pass_ctx, workers_option

LOCAL = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but 127.0.0.1 lets other machines in (no login).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@workers_option
@pass_ctx
@friendly
def serve(ctx: Context, host, port, workers):
    """Explore models and runs in a browser: generate, steps, attention, logit lens, the model.

    Every panel shows the SQL query that produced it; pasted into `gptsql db psql` it gives the same
    numbers. Generations from the page are recorded runs, like `gptsql generate`.
    """
    from ..web.app import serve as run_server

    if host not in LOCAL:
        click.echo(f"warning: listening on {host}: anyone who can reach it can run generations and read "
                   "every recorded run (there is no login); use the default 127.0.0.1 unless you mean it", err=True)
    run_server(ctx.db, host, port, workers,
               announce=lambda url: click.echo(f"gptsql explorer at {url} (Ctrl-C stops it)"))
