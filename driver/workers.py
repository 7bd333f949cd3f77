"""One generation over several backends: each worker (a connection of its own) owns a share of
every block's heads, of the MLP's unit groups and of the vocabulary (sql/10_shards.sql). The
workers run their shares at the same time (the vocabulary's over threads, psycopg waiting without
the GIL); between the two halves of a block Python hands every worker the others' partial vectors,
as the server's binary vector[] values, untouched (never parsed into numbers), over libpq's
asynchronous calls in one thread (exchange()). SQL sums them and chooses the token."""
from __future__ import annotations

import os
import select
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import psycopg
from pgvector.psycopg import register_vector

from ..errors import UserError
from .generation import Generation, chosen as chosen_row


def default_workers() -> int | None:
    """GPTSQL_WORKERS, or None: one worker per core (as many as the model has shares)."""
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


def start_generation(db, conn: psycopg.Connection, workers: int | None, *args, **kwargs) -> Generation:
    """A Generation on one backend (workers = 1), or over `workers` backends of the same server
    (None: one per core)."""
    return sharded(db, conn, workers, *args, **kwargs) or Generation(conn, *args, **kwargs)


def start_prediction(db, conn: psycopg.Connection, workers: int | None, model: str | None, prompt: str) -> Generation:
    """A Generation whose predict(top_n) is gptsql.predict()'s distribution (rank, token, piece,
    probability, logit), on one backend (workers = 1) or over `workers` backends (None: one per
    core), recorded as the same run."""
    return start_generation(db, conn, workers, model, prompt, 0, record=True, kind="predict")


def sharded(db, conn, workers: int | None, *args, **kwargs) -> "Generation | None":
    """A ShardedGeneration over `workers` backends; None for one backend (workers = 1). The default
    runs on one backend when its workers would take the server past half its connections, or did
    (room_for_workers: checked before they connect, and after, as commands started together all
    pass the first check), and when the server refuses the worker connections, going on with the
    started run. Worker connections go straight to the server: a refusal is not a crash, so it
    never restarts the embedded server."""
    if workers is None:
        workers = default_workers() or os.cpu_count() or 1
        clamp = True
    else:
        clamp = False
    if workers == 1 or (clamp and not room_for_workers(conn, min(workers, Workers.GROUPS))):
        return None
    gen = ShardedGeneration(conn, *args, **kwargs)
    try:
        gen.start_workers(lambda: psycopg.connect(db.dsn(), autocommit=True), workers, clamp)
    except UserError as exc:
        if not (clamp and isinstance(exc, WorkersRefused)):
            Generation.stop(gen, "failed", str(exc))
            raise
        # A busy server: the default (one worker per core) gives way to one backend, so a crowd of
        # commands still all run (the run already started goes on there); only --workers N insists.
        return gen.on_one_backend()
    if clamp and not room_for_workers(conn, 0):
        gen.workers.close()
        return gen.on_one_backend()
    return gen


def room_for_workers(conn: psycopg.Connection, n: int) -> bool:
    """Whether the server's connections in use, and n more, stay within half its max_connections.
    The default workers take only that half: a crowd of commands (3 connections each on 2 cores)
    took every slot on workers, and the commands that came later waited for one, then failed. The
    other half is for commands' own connections (one each, on one backend)."""
    used, limit = conn.execute("select count(*), current_setting('max_connections')::int from pg_stat_activity "
                               "where backend_type = 'client backend'").fetchone()
    return used + n <= limit // 2


class WorkersRefused(UserError):
    """The server would not take the worker connections."""


def shares(n: int, workers: int) -> list[tuple[int, int]]:
    """[lo, hi) of each worker over n things; uneven when workers does not divide n."""
    return [(n * w // workers, n * (w + 1) // workers) for w in range(workers)]


class Workers:
    """N connections to one server, each with its share of a model."""

    GROUPS = 4  # c_fc's 4 n_embd units are stored as 4 groups of n_embd (sql/00_schema.sql)

    def __init__(self, connect: Callable[[], psycopg.Connection], n: int, model_id: int, shape: tuple):
        _n_vocab, n_head = shape
        if n > min(n_head, self.GROUPS):
            raise UserError(f"{n} workers but the model has {n_head} heads and {self.GROUPS} MLP groups to share; "
                            f"use --workers {min(n_head, self.GROUPS)} or fewer")
        self.model_id, self.n = model_id, n
        self.heads, self.groups = shares(n_head, n), shares(self.GROUPS, n)
        self.vocab = [(w, n) for w in range(n)]  # share w of n of the vocabulary's pages (vocab_pages)
        self.conns: list[psycopg.Connection] = []
        self.prepared: list[set] = [set() for _ in range(n)]   # exchange()'s statements, per connection
        self.pending: set[int] = set()                          # workers with an exchange in flight
        try:
            for _ in range(n):
                conn = connect()
                register_vector(conn)
                register_packed(conn)
                self.conns.append(conn)
        except psycopg.OperationalError as exc:
            self.close()
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise WorkersRefused(f"the server refused worker connection {len(self.conns) + 1} of {n} ({detail}); "
                            "use fewer --workers (GPTSQL_WORKERS=1: one backend), or raise max_connections") from exc
        self.pool = ThreadPoolExecutor(n)
        # each share's columns of the attention projection, cut once per model and split
        self.each("select gptsql.prepare_projection_share(%s, %s, %s)", lambda w: [model_id, *self.heads[w]])

    def each(self, query: str, params: Callable[[int], list]) -> list[tuple]:
        """Run query on every worker at once (params(w) for worker w); their rows, worker-ordered."""
        def one(w):
            return self.conns[w].execute(query, params(w), prepare=True, binary=True).fetchone()
        return list(self.pool.map(one, range(self.n)))

    def exchange(self, name: bytes, query: bytes, params: Callable[[int], list]) -> list[list]:
        """each() for the block shares, over libpq's asynchronous calls in this one thread: sent to
        every worker, then read as each answers, every value as the server's binary bytes. Threads
        and psycopg's adaptation cost ~0.4 ms of Python CPU an exchange, 24 exchanges a step, on a
        machine whose cores the workers already fill; this costs ~0.08 ms (A/B, 300 exchanges).
        `query` uses $1, $2, ... with a cast on each (that types the parameters)."""
        pgconns = [conn.pgconn for conn in self.conns]
        for w, pg in enumerate(pgconns):
            if name not in self.prepared[w]:
                check(pg.prepare(name, query), pg)
                self.prepared[w].add(name)
            values = [encode(v) for v in params(w)]
            pg.send_query_prepared(name, [v for v, _ in values], [f for _, f in values], 1)
            self.pending.add(w)
            flush(pg)
        results: list = [None] * self.n
        while self.pending:
            ready, _, _ = select.select([pgconns[w].socket for w in self.pending], [], [])
            for w in list(self.pending):
                pg = pgconns[w]
                if pg.socket in ready:
                    pg.consume_input()
                while not pg.is_busy():
                    result = pg.get_result()
                    if result is None:
                        self.pending.discard(w)
                        break
                    results[w] = result
        for result, pg in zip(results, pgconns):
            check(result, pg)
        return [[r.get_value(0, c) if r.ntuples else None for c in range(r.nfields)] for r in results]

    def close(self) -> None:
        """Cancel what the workers still run (Ctrl-C left them mid-step) and wait for it to end, so
        nothing writes to the KV cache after finish_run empties it."""
        for conn in self.conns:
            try:
                conn.cancel_safe()
            except (psycopg.Error, AttributeError):
                pass
        if hasattr(self, "pool"):
            self.pool.shutdown(wait=True)
        for w in list(self.pending):   # an exchange in flight: wait for its (cancelled) statements
            pg = self.conns[w].pgconn
            try:
                if pg.flush():
                    continue   # its query never went whole, so the worker runs nothing: closing ends it
                while pg.get_result() is not None:
                    pass
            except psycopg.Error:
                pass
        self.pending.clear()
        for conn in self.conns:
            conn.close()


def flush(pg) -> None:
    """Send the rest of a query libpq could not write at once: psycopg keeps its connections
    non-blocking, so a query larger than the socket's buffer (a prompt chunk's partials) is sent
    in parts, and the worker would wait for the rest while we wait for its answer."""
    while pg.flush():
        readable, _, _ = select.select([pg.socket], [pg.socket], [])
        if readable:
            pg.consume_input()


def encode(value) -> tuple[bytes | None, int]:
    """A parameter for libpq: Packed arrays as binary, everything else as text (format 0)."""
    if value is None:
        return None, 0
    if isinstance(value, Packed):
        return bytes(value), 1
    if isinstance(value, bool):
        return (b"t" if value else b"f"), 0
    if isinstance(value, list):
        return ("{" + ",".join(map(str, value)) + "}").encode(), 0
    return str(value).encode(), 0


def check(result, pg) -> None:
    """A failed statement raises the psycopg error it stands for (as psycopg's execute would)."""
    if result.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
        raise psycopg.errors.error_from_result(result, encoding=pg.parameter_status(b"client_encoding").decode())


class Packed(bytes):
    """A vector[] in the server's binary array format, passed from worker to worker as it came."""


def register_packed(conn: psycopg.Connection) -> None:
    """vector[] results load as Packed bytes and Packed values go back as vector[]: building pgvector
    objects out of every partial cost the loop ~1 ms of Python a block, on the step's critical path."""
    oid = conn.execute("select 'vector[]'::regtype::oid").fetchone()[0]

    class Loader(psycopg.adapt.Loader):
        format = psycopg.pq.Format.BINARY

        def load(self, data) -> Packed:
            return Packed(data)

    class Dumper(psycopg.adapt.Dumper):
        format = psycopg.pq.Format.BINARY

        def dump(self, obj: Packed) -> bytes:
            return obj

    Dumper.oid = oid
    conn.adapters.register_loader(oid, Loader)
    conn.adapters.register_dumper(Packed, Dumper)


def packed(value) -> Packed | None:
    return None if value is None else Packed(value)


ARRAY_HEADER = struct.Struct("!iiiii")  # ndim, has nulls, element type, length, lower bound


def joined(shares: list) -> Packed:
    """The workers' packed vector[]s end to end (worker-major), as the SQL side reads them: one
    array header for all, then every share's elements as they are."""
    shares = list(shares)
    if any(share is None for share in shares):  # a share's rows are gone: the model was removed
        raise psycopg.errors.NoDataFound("a worker's share came back empty")
    whole = [share for share in shares if struct.unpack_from("!i", share)[0] == 1]   # ndim 0: empty
    if not whole:
        return shares[0]
    _ndim, _nulls, element, _n, _lower = ARRAY_HEADER.unpack_from(whole[0])
    n = sum(ARRAY_HEADER.unpack_from(share)[3] for share in whole)
    nulls = max(ARRAY_HEADER.unpack_from(share)[1] for share in whole)
    return Packed(ARRAY_HEADER.pack(1, nulls, element, n, 1) + b"".join(share[ARRAY_HEADER.size:] for share in whole))


def flat(shares: list) -> list:
    """The workers' arrays end to end (worker-major), as the SQL side reads them."""
    shares = list(shares)
    if any(share is None for share in shares):  # a share's rows are gone: the model was removed
        raise psycopg.errors.NoDataFound("a worker's share came back empty")
    return [p for share in shares for p in share]


class ShardedGeneration(Generation):
    """A Generation whose steps run over the workers; started and finished on the lead connection."""

    ATTENTION = b"""select h, partial from gptsql.block_attention_share($1::bigint, $2::int, $3::int, $4::int,
                    $5::int[], $6::vector[], $7::vector[], $8::int, $9::int, $10::boolean)"""
    MLP = b"""select a, partial from gptsql.block_mlp_share($1::int, $2::int, $3::vector[], $4::vector[], $5::int,
              $6::int)"""
    LOGITS = """select hidden, top_tokens, top_logits, peak, z, mass, g_token, g_logit, g_key, cand_tokens,
                cand_logits from gptsql.logits_share(%s, %s, %s, %b::vector[], %b::vector[], %s, %s, %s, %s, %s, %s)"""
    VOCAB = """select cand_tokens, cand_logits from gptsql.vocab_share(%s, %b::vector, %s, %s, %s, %s, NULL)"""
    CHOOSE = """select token, bytes, probability, logit
                from gptsql.choose_shards(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""
    RECORD = """select gptsql.record_residual(%s, %s, %s, %b::vector[],
                gptsql.sum_partials(%b::vector[], %b::vector[]))"""
    PREDICT = "select * from gptsql.predict_shards(%s, %s, %s, %s, %s, %s, %s)"
    CANDIDATES = 1000  # a shard's candidates for top-p (choose() sorts the 1000 best too)

    def start_workers(self, connect: Callable[[], psycopg.Connection], n: int, clamp: bool) -> None:
        """Connect n workers (clamp: no more than the model has shares for) to the started run."""
        self.n_layer, n_vocab, n_head, self.temperature, self.top_k, self.top_p = self.conn.execute(
            """select m.n_layer, m.n_vocab, m.n_head, r.temperature, r.top_k, r.top_p from gptsql.run r
               join gptsql.model m on m.id = r.model_id where r.id = %s""", [self.run_id]).fetchone()
        if clamp:  # the default (one per core) never asks for more shares than the model has
            n = min(n, n_head, Workers.GROUPS)
        self.workers = Workers(connect, n, self.model_id, (n_vocab, n_head))

    def on_one_backend(self) -> Generation:
        """This run, stepped on the lead connection alone from now on (no worker was started)."""
        gen = Generation.__new__(Generation)
        gen.__dict__.update(self.__dict__)
        return gen

    def stop(self, status: str, error: str | None = None) -> None:
        self.workers.close()  # first: a step in flight must not refill the cache afterwards
        super().stop(status, error)

    def blocks(self, fresh: list[int], start: int) -> tuple:
        """The places start, ... through every block: (the stream, its last MLP partials)."""
        ws, run, model = self.workers, self.run_id, self.model_id
        resid, partials = None, None
        for block in range(self.n_layer):
            rows = ws.exchange(b"gptsql_attention", self.ATTENTION,
                               lambda w: [run, model, block, start, fresh, resid, partials, *ws.heads[w], w == 0])
            resid, partials = packed(rows[0][0]), joined(packed(r[1]) for r in rows)
            rows = ws.exchange(b"gptsql_mlp", self.MLP, lambda w: [model, block, resid, partials, *ws.groups[w]])
            resid, partials = packed(rows[0][0]), joined(packed(r[1]) for r in rows)
        return resid, partials

    def vocabulary(self, stream: tuple, start: int, u: float, keep: int | None) -> list[tuple]:
        """Every worker's share of the vocabulary for the last place (logits_share's rows)."""
        ws, (resid, partials) = self.workers, stream
        return ws.each(self.LOGITS, lambda w: [self.run_id, self.model_id, start, resid, partials, *ws.vocab[w],
                                               w == 0, self.temperature, u, keep])

    def feed(self, fresh: list[int], start: int) -> None:
        """A chunk of the prompt through every block, its last residual row recorded (by the lead,
        as logits_share does for a step's last block)."""
        resid, partials = self.blocks(fresh, start)
        self.workers.conns[0].execute(self.RECORD, [self.run_id, self.n_layer - 1, start, resid, resid, partials],
                                      prepare=True, binary=True)

    def step(self, fresh: list[int], start: int):
        began = time.perf_counter()
        ws, run, model = self.workers, self.run_id, self.model_id
        place = start + len(fresh)
        u = self.conn.execute("select gptsql.draw(%s, %s)", [run, place], prepare=True).fetchone()[0]
        stream = self.blocks(fresh, start)
        sampling = self.temperature > 0 and (self.top_k > 0 or self.top_p < 1)
        keep = (self.top_k or self.CANDIDATES) if sampling else 0
        hidden, *columns = zip(*self.vocabulary(stream, start, u, keep))
        merged = [flat(columns[0]), flat(columns[1]), *map(list, columns[2:8])]
        candidates = [flat(c or [] for c in columns[8]), flat(c or [] for c in columns[9])]
        elapsed_ms = (time.perf_counter() - began) * 1000
        chosen = self.conn.execute(self.CHOOSE, [run, place, u, elapsed_ms, *merged, *candidates, False],
                                   prepare=True).fetchone()
        if chosen is None:  # a nucleus wider than the shards' candidates: every logit, then again
            rows = ws.each(self.VOCAB, lambda w: [model, hidden[0], *ws.vocab[w], self.temperature, u])
            candidates = [flat(r[0] for r in rows), flat(r[1] for r in rows)]
            chosen = self.conn.execute(self.CHOOSE, [run, place, u, elapsed_ms, *merged, *candidates, True],
                                       prepare=True).fetchone()
        return chosen_row(chosen)

    def predict(self, top_n: int) -> list[tuple]:
        """Generation.predict over the shards: the prompt through the blocks in chunks, then the
        top_n of the shards' own top_n, merged in SQL into the run's record; the run is finished."""
        fresh, start = self.prefill()
        rows = self.vocabulary(self.blocks(fresh, start), start, 0.5, top_n)
        _hidden, _top, _logits, peaks, zs, *_rest, cand_tokens, cand_logits = zip(*rows)
        rows = self.conn.execute(self.PREDICT, [self.run_id, start + len(fresh) - 1, top_n, flat(cand_tokens),
                                                flat(cand_logits), list(peaks), list(zs)]).fetchall()
        self.stop("done")
        if self.on_prefill:
            self.on_prefill(len(self.prompt_tokens), len(self.prompt_tokens))
        return rows
