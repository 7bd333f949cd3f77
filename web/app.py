"""The explorer's web app (Starlette): the page, its static files, one JSON endpoint per panel and
the generation stream (server-sent events).

Python here moves rows: every number comes from one query of web/queries.py, run read-only with
bound parameters; the page never sends SQL. Run lookup and checks, the options' rules and token
text are the CLI's (gptsql.service), worded for the page where it must (no CLI flags). Generation
goes through the CLI's path (driver.shares.start_generation: the workers by default) and is
recorded like any other run.
"""
from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Callable, Iterator

import anyio
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UserError
from ..service import models, options, runs
from ..service.text import check_prompt, db_error_message, run_pieces, token_pieces
from . import queries
from .gate import Gate

STATIC = Path(__file__).parent / "static"
LABELS = {"max_tokens": "Max tokens", "temperature": "Temperature", "top_k": "Top-k", "top_p": "Top-p",
          "seed": "Seed", "truncate": "Keep the end of a long prompt"}     # as the page labels the fields
NORMS = ("ln_1", "ln_2", "ln_f")

# The CLI's flags in the engine's hints, said as the page's own controls (the page has no flags).
PAGE_WORDS = [
    (re.compile(r"--truncate left"), "the box “Keep the end of a long prompt”"),
    (re.compile(r"--max-tokens\b"), "Max tokens"),
    (re.compile(r"--temperature\b"), "Temperature"),
    (re.compile(r"--top-k\b"), "Top-k"),
    (re.compile(r"--top-p\b"), "Top-p"),
    (re.compile(r"--seed\b"), "Seed"),
    (re.compile(r"--places? [^ ,;)]*"), "the place"),
]


def page_words(message: str) -> str:
    """A message of the CLI or the engine in the page's words: its controls, not the CLI's flags."""
    for flag, control in PAGE_WORDS:
        message = flag.sub(control, message)
    return message


# Which columns of a panel are token pieces, and where their bytes are: ("token", the column of the
# token id) or ("place", the column of the run's place, and how far before it). Each shows as the
# CLI shows it: a piece that is part of a character as its bytes, <e4 bd>, not as U+FFFD.
PIECES = {
    "tokens": {"piece": ("token", "token", 0)},
    "step": {"piece": ("token", "token", 0), "after_piece": ("place", "place", -1)},
    "head": {"query_piece": ("place", "query_place", 0)},
    "lens": {"piece": ("place", "place", 0), "predicted_piece": ("token", "token", 0)},
    "norms": {"piece": ("place", "place", 0)},
}


def run_id(conn, request: Request) -> int:
    """The run of the URL: a number or 'latest' (the newest run of any kind), as `gptsql runs show` reads it."""
    return runs.resolve_run(conn, request.path_params["run"])


def readable_pieces(conn, run: int, found: dict, panel: str) -> dict:
    """The panel's rows with its pieces readable (PIECES), in place; returns the panel."""
    columns, rows = found["columns"], found["rows"]
    by_place = by_token = None
    for column, (kind, key, shift) in PIECES[panel].items():
        if column not in columns or key not in columns:
            continue
        i, k = columns.index(column), columns.index(key)
        if kind == "place":
            by_place = run_pieces(conn, run) if by_place is None else by_place
            lookup, offset = by_place, shift
        else:
            ids = [row[k] for row in rows]
            by_token = {**(by_token or {}), **token_pieces(conn, runs.run_model_id(conn, run), ids)}
            lookup, offset = by_token, 0
        for row in rows:
            if row[k] is not None:
                row[i] = lookup.get(row[k] + offset, row[i])
    return found


def labelled(name: str, rule, raw):
    """A value checked by its rule, refused in the page's words (the field's label, not a CLI flag)."""
    try:
        return rule(raw)
    except options.BadValue as exc:
        raise UserError(f"{LABELS.get(name, name)}: {exc}") from None


def integer(request: Request, name: str, default: int | None = None) -> int:
    raw = request.path_params.get(name, request.query_params.get(name))
    if raw in (None, ""):
        if default is None:
            raise UserError(f"{name} is missing: give it as a whole number")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name} is a whole number, not {raw!r}") from None


class Explorer:
    LENS_SCANS = 12  # the lens's default window: about this many vocabulary scans (one place of GPT-2 124M)
    LENS_MAX_SCANS = 96  # the widest window a request may ask for (~30 s on GPT-2 124M)
    RUNS_LIMIT = 1000    # runs listed at most
    POOL_SIZE = 8        # panels computed at once; the others wait for a connection
    POOL_WAIT_S = 30     # ... this long, then get a one-line error
    STATEMENT_TIMEOUT_S = 60   # a panel's query is stopped after this long
    MAX_BODY = 1 << 20   # bytes of a generation request: a prompt longer cannot fit a context anyway

    def __init__(self, db, workers: int | None = None, host: str = "127.0.0.1", port: int = 8000):
        self.db, self.workers = db, workers
        self.host, self.port = host, port   # who the gate lets in (gate.py)
        # Ctrl-C: set, and every connection in use (a panel's, a generation's) has its statement
        # cancelled, so that the server stops at once rather than after the generations' last token.
        self.stopping = threading.Event()
        self.busy: set[psycopg.Connection] = set()
        self.busy_lock = threading.Lock()
        # Bounded, each connection checked before it is handed out (see check), idle ones closed
        # after a minute.
        self.pool = ConnectionPool(db.dsn(), min_size=1, max_size=self.POOL_SIZE, timeout=self.POOL_WAIT_S,
                                   max_idle=60, kwargs={"autocommit": True, "application_name": "gptsql explorer"},
                                   configure=self.configure, check=self.check, open=False, name="explorer")

    # ------------------------------------------------------------------------ plumbing
    def configure(self, conn: psycopg.Connection) -> None:
        conn.execute(f"set statement_timeout = '{self.STATEMENT_TIMEOUT_S}s'")

    def check(self, conn: psycopg.Connection) -> None:
        """A pooled connection, checked before use. One found broken means the server restarted
        (or dropped its clients): every idle one is then replaced at once, not each after a failed
        check (the pool waits longer after each, 1 s, 2 s, 4 s...)."""
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            self.pool.drain()
            raise

    def panel(self, fn):
        """An endpoint whose UserError or database error is one line, as JSON; its queries run on a
        pooled connection in a worker thread and are cancelled when the client goes away."""

        async def endpoint(request: Request):
            status, body = await self.on_connection(request, lambda conn: self.answer(fn, conn, request))
            return JSONResponse(body, status_code=status)

        return endpoint

    def answer(self, fn, conn, request: Request) -> tuple[int, dict]:
        try:
            return 200, fn(conn, request)
        except UserError as exc:
            return 400, {"error": page_words(str(exc))}
        except psycopg.errors.QueryCanceled:
            return 503, {"error": f"the query took longer than {self.STATEMENT_TIMEOUT_S} s and was stopped: "
                                  "ask for less (a smaller window of places), or explore the run in gptsql db psql"}
        except psycopg.Error as exc:
            if self.stopping.is_set():
                return 503, {"error": "gptsql serve is stopping (Ctrl-C); start it again, then reload the page"}
            if conn.broken or conn.closed:
                return 503, {"error": f"lost the database connection ({page_words(db_error_message(exc))}); "
                                      "reload the page to try again"}
            return 400, {"error": page_words(db_error_message(exc))}

    async def on_connection(self, request: Request, work: Callable[[psycopg.Connection], tuple[int, dict]]):
        """work(conn) in a worker thread on a pooled connection. A client that goes away meanwhile
        has its query cancelled (else it ran on for as long as it took, holding the connection and
        the thread), and that connection is closed rather than reused."""
        try:
            if self.db.is_embedded and not self.db.embedded.is_running():
                await run_in_threadpool(self.db.embedded.start)   # as every command does: stopped, it starts
            conn = await run_in_threadpool(self.pool.getconn)
        except UserError as exc:
            return 503, {"error": str(exc)}
        except PoolTimeout:
            return 503, {"error": f"the database gave the explorer no connection within {self.POOL_WAIT_S} s "
                                  f"({self.POOL_SIZE} panels at once at most, or the server is down); try again"}
        gone = False
        self.using(conn)

        async def cancel_when_gone():
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            await run_in_threadpool(conn.cancel_safe)

        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(cancel_when_gone)
                try:
                    result = await run_in_threadpool(work, conn)
                finally:
                    watching.cancel_scope.cancel()
        finally:
            self.done_with(conn)
            if gone:
                conn.close()
            await run_in_threadpool(self.pool.putconn, conn)
        return result

    def using(self, conn: psycopg.Connection) -> None:
        with self.busy_lock:
            self.busy.add(conn)

    def done_with(self, conn: psycopg.Connection) -> None:
        with self.busy_lock:
            self.busy.discard(conn)

    def stop(self) -> None:
        """Ctrl-C: no more work; every statement running for a panel or a generation is cancelled
        (a generation then ends its run as interrupted and its stream says so)."""
        self.stopping.set()
        with self.busy_lock:
            busy = list(self.busy)
        for conn in busy:
            conn.cancel_safe(timeout=5)

    # ------------------------------------------------------------------------- checks
    @staticmethod
    def run_row(conn, run: int) -> dict:
        found = queries.read(conn, queries.RUN, {"run": run})
        if not found["rows"]:
            raise UserError(f"there is no run {run}; list them with: gptsql runs list")
        return {**found, "row": dict(zip(found["columns"], found["rows"][0]))}

    @staticmethod
    def recorded(conn, run: int) -> dict:
        """The run's row; a run that kept no activations refused in the page's words."""
        info = runs.run_info(conn, run)
        try:
            runs.recorded_places(conn, run, info)
        except runs.NotRecorded:
            raise UserError(f"run {run} kept no activations: it was generated with recording off; "
                            "generate it again here (the page records every run)") from None
        return info

    @staticmethod
    def places(conn, run: int) -> int:
        """How many places of a run went through the blocks (the last token chosen is never read)."""
        return runs.recorded_places(conn, run)

    def explorable(self, conn, request: Request) -> tuple[int, dict, int]:
        """The run of the URL, recorded and with activations: (run, its row, places read)."""
        run = run_id(conn, request)
        info = self.recorded(conn, run)
        return run, info, self.places(conn, run)

    def at_place(self, conn, request: Request) -> tuple[int, dict, int]:
        """The run and the place of the URL, checked: (run, its row, place)."""
        run, info, n = self.explorable(conn, request)
        return run, info, options.place(integer(request, "place"), n, run)

    def block_of(self, conn, request: Request, info: dict, name: str = "block") -> int:
        n_layer, _ = models.shape(conn, info["model"])
        return options.block(integer(request, name), n_layer, name)

    def head_of(self, conn, request: Request, info: dict) -> int:
        _, n_head = models.shape(conn, info["model"])
        return options.head(integer(request, "head"), n_head)

    # ------------------------------------------------------------------------- panels
    def models(self, conn, request):
        return queries.read(conn, queries.MODELS, {})

    def model_parts(self, conn, request):
        name = request.path_params["model"]
        models.shape(conn, name)
        return queries.read(conn, queries.MODEL_PARTS, {"model": name})

    def runs(self, conn, request):
        limit = integer(request, "limit", 50)
        if not 1 <= limit <= self.RUNS_LIMIT:
            raise UserError(f"limit must be between 1 and {self.RUNS_LIMIT} runs, not {limit}")
        return queries.read(conn, queries.RUNS, {"limit": limit})

    def run(self, conn, request):
        return self.run_row(conn, run_id(conn, request))

    def tokens(self, conn, request):
        run = run_id(conn, request)
        return readable_pieces(conn, run, queries.read(conn, queries.RUN_TOKENS, {"run": run}), "tokens")

    def step(self, conn, request):
        run, step = run_id(conn, request), integer(request, "step")
        info = self.recorded(conn, run)
        runs.check_step(run, info, step)
        temperature = labelled("temperature", options.temperature, request.query_params.get("temperature") or "1")
        found = queries.read(conn, queries.STEP, {"run": run, "step": step, "temperature": temperature})
        return readable_pieces(conn, run, found, "step")

    def attention(self, conn, request):
        """The thumbnails of one block (?block=B), or of every block; with the query of every block,
        which the page shows (it asks for them a block at a time)."""
        run = run_id(conn, request)
        info = self.recorded(conn, run)
        pixels = integer(request, "pixels", 32)
        if not 4 <= pixels <= 256:
            raise UserError(f"pixels must be between 4 and 256, not {pixels}")
        n_layer, n_head = models.shape(conn, info["model"])
        block = self.block_of(conn, request, info) if request.query_params.get("block") else None
        params = {"run": run, "block": block, "pixels": pixels}
        found = queries.read(conn, queries.ATTENTION_GRID, params)
        return {**found, "n_layer": n_layer, "n_head": n_head, **self.kv_heads(conn, info["model"]),
                "whole_sql": queries.filled(conn, queries.ATTENTION_GRID, {**params, "block": None})}

    @staticmethod
    def kv_heads(conn, model: str) -> dict:
        family, n_kv_head = conn.execute("select family, n_kv_head from gptsql.model where name = %s",
                                         [model]).fetchone()
        return {"family": family, "n_kv_head": n_kv_head}

    def head(self, conn, request):
        run, block, head = run_id(conn, request), integer(request, "block"), integer(request, "head")
        info = self.recorded(conn, run)
        n_layer, n_head = models.shape(conn, info["model"])
        options.block(block, n_layer)
        options.head(head, n_head)
        found = queries.read(conn, queries.ATTENTION_HEAD, {"run": run, "block": block, "head": head})
        return readable_pieces(conn, run, found, "head")

    def lens(self, conn, request):
        """The logit lens over a window of places, of one block (?block=B) or of every block; with
        the query of every block, which the page shows (it asks for them a block at a time)."""
        run, info, n = self.explorable(conn, request)
        n_layer, _ = models.shape(conn, info["model"])
        last = integer(request, "last", n - 1)
        first = integer(request, "first", max(0, last + 1 - max(1, self.LENS_SCANS // n_layer)))
        options.places(first, last, n, run)
        widest = max(1, self.LENS_MAX_SCANS // n_layer)   # one vocabulary scan per block and place
        if last - first + 1 > widest:
            raise UserError(f"places {first} to {last} are too many at once: on this model the lens shows at most "
                            f"{widest} place{'s' * (widest != 1)} at a time (one scan of the vocabulary per block "
                            f"and place); ask for {last + 1 - widest} to {last}, or another window that wide")
        every = {"run": run, "first": first, "last": last, "first_block": 0, "last_block": n_layer - 1}
        params = every
        if request.query_params.get("block"):
            block = self.block_of(conn, request, info)
            params = {**every, "first_block": block, "last_block": block}
        found = readable_pieces(conn, run, queries.read(conn, queries.LOGIT_LENS, params), "lens")
        return {**found, "places": n, "n_layer": n_layer,
                "first": first, "last": last, "whole_sql": queries.filled(conn, queries.LOGIT_LENS, every)}

    def norms(self, conn, request):
        run = run_id(conn, request)
        self.recorded(conn, run)
        return readable_pieces(conn, run, queries.read(conn, queries.RESIDUAL_NORMS, {"run": run}), "norms")

    # ------------------------------------------------------------- inside one place of a run
    def inside(self, conn, request):
        run, _info, _n = self.explorable(conn, request)
        return queries.read(conn, queries.INSIDE, {"run": run})

    def inside_tokens(self, conn, request):
        run, _info, _n = self.explorable(conn, request)
        return queries.read(conn, queries.INSIDE_TOKENS, {"run": run})

    def embedding(self, conn, request):
        run, _info, place = self.at_place(conn, request)
        return queries.read(conn, queries.EMBEDDING, {"run": run, "place": place})

    def norm(self, conn, request):
        run, info, place = self.at_place(conn, request)
        norm = request.path_params["norm"]
        if norm not in NORMS:
            raise UserError(f"a norm is one of {', '.join(NORMS)}, not {norm!r}")
        block = None if norm == "ln_f" else self.block_of(conn, request, info)
        return queries.read(conn, queries.NORM, {"run": run, "place": place, "norm": norm, "block": block})

    def inside_head(self, conn, request):
        run, info, place = self.at_place(conn, request)
        block, head = self.block_of(conn, request, info), self.head_of(conn, request, info)
        return queries.read(conn, queries.HEAD, {"run": run, "place": place, "block": block, "head": head})

    def projection(self, conn, request):
        run, info, place = self.at_place(conn, request)
        return queries.read(conn, queries.PROJECTION, {"run": run, "place": place,
                                                       "block": self.block_of(conn, request, info)})

    def mlp(self, conn, request):
        run, info, place = self.at_place(conn, request)
        return queries.read(conn, queries.MLP, {"run": run, "place": place, "block": self.block_of(conn, request, info)})

    def sampling(self, conn, request):
        """The next token after a place, at the run's temperature, top-k and top-p, or at those asked."""
        run, info, place = self.at_place(conn, request)
        asked = {name: labelled(name, options.RULES[name], request.query_params.get(name) or str(info[name]))
                 for name in ("temperature", "top_k", "top_p")}
        return queries.read(conn, queries.SAMPLING, {"run": run, "place": place, **asked})

    def lens_at(self, conn, request):
        """The lens at one place, blocks first_block .. last_block (every block by default)."""
        run, info, place = self.at_place(conn, request)
        n_layer, _ = models.shape(conn, info["model"])
        first, last = integer(request, "first_block", 0), integer(request, "last_block", n_layer - 1)
        if not 0 <= first <= last < n_layer:
            raise UserError(f"blocks must be between 0 and {n_layer - 1}, the first not after the last; "
                            f"not {first} to {last}")
        params = {"run": run, "place": place, "first_block": first, "last_block": last}
        return {**queries.read(conn, queries.LENS_AT, params),
                "whole_sql": queries.filled(conn, queries.LENS_AT, {**params, "first_block": 0,
                                                                     "last_block": n_layer - 1})}

    # ---------------------------------------------------------------------- generation
    async def generate(self, request: Request):
        """POST, a JSON object of the form's fields. Answers server-sent events: start (the run),
        token (each one as the database chooses it, with the text it adds), done (with the text of
        bytes held back at the end) or error. A GET is refused: it starts
        a recorded generation, so it is never something a link or an image can ask for."""
        if request.method != "POST":
            return JSONResponse({"error": "a generation is started by a POST from the explorer's page; open the page "
                                          "and use its Generate form"}, status_code=405, headers={"Allow": "POST"})
        try:
            params = await self.fields(request)
            prompt = check_prompt(params.get("prompt", ""))
            sampling = options.Sampling.read(params, LABELS)
            truncate = labelled("truncate", options.truncate, params.get("truncate") or "none")
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        events = self.stream(params.get("model") or None, prompt, sampling, truncate == "left")
        return StreamingResponse(until_gone(request, events),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def fields(self, request: Request) -> dict[str, str]:
        """The generation's fields: a JSON object (as the page sends its form), at most MAX_BODY bytes,
        each value as text (the CLI's options convert them)."""
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise UserError("a generation request is a JSON object (Content-Type: application/json), "
                            "as the explorer's page sends it")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.MAX_BODY:
                raise UserError(f"the request is larger than {self.MAX_BODY // 1024} KB; a prompt that long cannot "
                                "fit a context window: shorten it")
        try:
            data = json.loads(body)
        except ValueError:
            raise UserError("the request is not valid JSON; send the form's fields as a JSON object") from None
        if not isinstance(data, dict):
            raise UserError("the request is not a JSON object of the form's fields")
        return {key: "" if value is None else str(value) for key, value in data.items()}

    def stream(self, model, prompt, sampling: options.Sampling, truncate_left: bool) -> Iterator[str]:
        from ..driver.shares import start_generation

        conn = gen = None
        try:
            conn = self.db.connect()
            self.using(conn)
            if self.stopping.is_set():
                raise Stopping
            gen = start_generation(self.db, conn, self.workers, model, prompt, sampling.max_tokens,
                                   sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed,
                                   record=True, truncate_left=truncate_left)
            yield event("start", {"run": gen.run_id, "prompt": prompt, "prompt_tokens": len(gen.prompt_tokens)})
            # the text as `gptsql generate` streams it; bytes held back at the end (part of a
            # character) come with "done"
            step, tail = 0, ""
            for token, _raw, probability, text in gen.texts():
                if token is None:
                    tail = text
                    continue
                step += 1
                yield event("token", {"step": step, "token": token, "text": text, "probability": probability})
                if self.stopping.is_set():
                    raise Stopping
            yield event("done", {"run": gen.run_id, "tokens": gen.generated, "text": tail})
        except UserError as exc:
            yield event("error", {"message": page_words(str(exc))})
        except (Stopping, psycopg.Error) as exc:
            if self.stopping.is_set():
                if gen is not None:
                    gen.stop("interrupted")
                where = f": run {gen.run_id} is marked interrupted" if gen is not None else ""
                yield event("error", {"message": f"gptsql serve was stopped (Ctrl-C){where}; start it again, "
                                                 "then reload the page"})
                return
            message = page_words(db_error_message(exc))
            if gen is not None:
                gen.stop("failed", message)
            yield event("error", {"message": message})
        finally:  # the page went away mid-run: the run is marked interrupted, like Ctrl-C
            if gen is not None:
                gen.stop("interrupted")
            if conn is not None:
                self.done_with(conn)
                conn.close()

    # --------------------------------------------------------------------------- files
    @staticmethod
    def index(request):
        return FileResponse(STATIC / "index.html")

    @staticmethod
    def sql_file(request):
        """The engine's SQL files, read-only, for the model view's links."""
        from .. import sql

        folder = Path(sql.__file__).parent
        name = request.path_params["name"]
        files = {p.name: p for p in folder.glob("*.sql")}
        if name not in files:
            return PlainTextResponse(f"no such engine file: {name}; the files are {', '.join(sorted(files))}",
                                     status_code=404)
        return PlainTextResponse(files[name].read_text())

    def app(self) -> Starlette:
        p = self.panel
        routes = [
            Route("/", self.index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/sql/{name}", self.sql_file),
            Route("/api/models", p(self.models)),
            Route("/api/models/{model}/parts", p(self.model_parts)),
            Route("/api/runs", p(self.runs)),
            Route("/api/runs/{run}", p(self.run)),
            Route("/api/runs/{run}/tokens", p(self.tokens)),
            Route("/api/runs/{run}/steps/{step}", p(self.step)),
            Route("/api/runs/{run}/attention", p(self.attention)),
            Route("/api/runs/{run}/attention/{block}/{head}", p(self.head)),
            Route("/api/runs/{run}/lens", p(self.lens)),
            Route("/api/runs/{run}/norms", p(self.norms)),
            Route("/api/runs/{run}/inside", p(self.inside)),
            Route("/api/runs/{run}/inside/tokens", p(self.inside_tokens)),
            Route("/api/runs/{run}/inside/{place}/embedding", p(self.embedding)),
            Route("/api/runs/{run}/inside/{place}/norm/{norm}", p(self.norm)),
            Route("/api/runs/{run}/inside/{place}/attention/{block}/{head}", p(self.inside_head)),
            Route("/api/runs/{run}/inside/{place}/projection/{block}", p(self.projection)),
            Route("/api/runs/{run}/inside/{place}/mlp/{block}", p(self.mlp)),
            Route("/api/runs/{run}/inside/{place}/sampling", p(self.sampling)),
            Route("/api/runs/{run}/inside/{place}/lens", p(self.lens_at)),
            Route("/api/generate", self.generate, methods=["GET", "POST"]),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan,
                         middleware=[Middleware(Gate, host=self.host, port=lambda: self.port)])

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.pool.open()
        try:
            yield
        finally:
            await run_in_threadpool(self.pool.close)


class Stopping(Exception):
    """gptsql serve is stopping (Ctrl-C): a generation ends at its next step."""


async def until_gone(request: Request, events: Iterator[str]):
    """The generation's events, one step at a time in a worker thread, until the page goes away;
    then the generation is closed (its run marked interrupted), never left suspended mid-run."""
    end = object()
    try:
        while not await request.is_disconnected():
            item = await run_in_threadpool(next, events, end)
            if item is end:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(events.close)


def event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(db, workers: int | None = None, host: str = "127.0.0.1", port: int = 8000) -> Starlette:
    return Explorer(db, workers, host, port).app()


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (uvicorn would log and exit 3)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror}); "
                        "use 127.0.0.1, or an address or name that resolves") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                            "(--port 0: any free port)") from None


def serve(db, host: str, port: int, workers: int | None = None,
          announce: Callable[[str], None] = print) -> None:
    """Run the explorer until Ctrl-C; `announce` gets the address once the server listens."""
    import uvicorn

    check_address(host, port)
    db.connect().close()  # start the embedded server and install the engine before the first page
    explorer = Explorer(db, workers, host, port)
    config = uvicorn.Config(explorer.app(), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host

    original = server.startup

    async def startup(sockets=None):
        await original(sockets)
        if server.started:
            port_bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            explorer.port = port_bound
            announce(f"http://{shown}:{port_bound}/")

    server.startup = startup
    exiting = server.handle_exit

    def handle_exit(sig, frame):
        # Before uvicorn waits for the open connections: a streaming generation is one of them, and
        # would otherwise run to its last token first.
        threading.Thread(target=explorer.stop, daemon=True).start()
        exiting(sig, frame)

    server.handle_exit = handle_exit
    server.run()
