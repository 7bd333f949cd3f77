"""Memory and disk for the models: the embedded server's shared_buffers follow the loaded models, a
load first checks the free disk, and a model larger than shared_buffers says so.

Why: a model whose weights fit in shared_buffers reads them from PostgreSQL's own buffers on every
token; a larger one reads every page through the OS page cache and the buffer manager's evictions,
2-3x slower per weight (README, "Speed").

Two environment variables stand in for the machine in tests (a tiny model against a small limit):
GPTSQL_MEMTOTAL (the RAM, instead of /proc/meminfo's MemTotal) and GPTSQL_FREE_DISK (the free disk
of the data directory, instead of what the file system says). Both take bytes or 64MB / 2GB.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import psycopg

from ..errors import UserError

Say = Callable[[str], None]

RAM_SHARE = 0.5                    # of MemTotal at most for shared_buffers: the OS and others keep the rest
BASE_SHARED_BUFFERS = 1 << 30      # what a new embedded server starts with (GPT-2 124M fits)
HEADROOM_FACTOR, HEADROOM_BYTES = 1.2, 256 << 20   # KV caches, vocabulary, indexes beside the weights
BLOCK = 8192
UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """Bytes of '12345', '64MB', '2GB' or PostgreSQL's '128kB'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?[bB]?)\s*", text)
    if not match:
        raise UserError(f"{text!r} is not a size: write bytes or a number with kB, MB, GB or TB (e.g. 512MB)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def human(n: int) -> str:
    """'1.4 GB', '320 MB': sizes in messages."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{max(n, 0) / 2**20:.0f} MB"


def pg_setting(n: int) -> str:
    """A size as a shared_buffers value (whole MB)."""
    return f"{max(n >> 20, 1)}MB"


def mem_total() -> int:
    if os.environ.get("GPTSQL_MEMTOTAL"):
        return parse_size(os.environ["GPTSQL_MEMTOTAL"])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ceiling() -> int:
    """The most shared_buffers may take of this machine."""
    return int(mem_total() * RAM_SHARE) >> 20 << 20


def base_shared_buffers() -> str:
    """shared_buffers of a new embedded server: 1 GB, less on a machine with under 2 GB."""
    return pg_setting(min(BASE_SHARED_BUFFERS, ceiling()))


def free_disk(path: Path) -> int:
    if os.environ.get("GPTSQL_FREE_DISK"):
        return parse_size(os.environ["GPTSQL_FREE_DISK"])
    while not path.exists():  # the data directory may not exist before the first start
        path = path.parent
    return shutil.disk_usage(path).free


def _table_bytes(rows: int, row_data: int, index_per_row: int) -> int:
    """Heap pages of `rows` rows of `row_data` bytes each (vectors are stored inline, STORAGE PLAIN: a
    row never spans pages, so a 1024-wide float32 row leaves half its page empty), plus its index."""
    tuple_bytes = -(-(24 + row_data) // 8) * 8 + 4          # header, MAXALIGN, line pointer
    rows_per_page = max((BLOCK - 24) // tuple_bytes, 1)
    return -(-rows // rows_per_page) * BLOCK + rows * index_per_row


def _vector_bytes(n_embd: int, dtype: str) -> int:
    return 8 + (2 if dtype == "float16" else 4) * n_embd


def wte_bytes(rows: int, n_embd: int, dtype: str) -> int:
    """Disk of `rows` token embeddings (gptsql.wte): heap and primary key."""
    return _table_bytes(rows, 16 + _vector_bytes(n_embd, dtype), 24)


def linear_bytes(rows: int, width: int, dtype: str) -> int:
    """Disk of `rows` rows of gptsql.linear (one output unit's weights over an input slice `width` wide)."""
    return _table_bytes(rows, 44 + _vector_bytes(width, dtype), 64)


def estimate_model_bytes(config, dtype: str) -> int:
    """Bytes the weight partitions of a model of this shape take on disk (what every token reads):
    the token embeddings (and an untied output layer) and the linear layers, one row per output unit
    and input slice: q, k, v, the projection and the MLP's up (SwiGLU: gate and up in one row) read
    n_embd, its down projection mlp_groups slices of its hidden units."""
    from ..loader.load import mlp_groups

    c, groups = config, mlp_groups(config.n_inner)
    gated = c.family == "llama"                  # a gate row carries its up row: twice as wide
    wide = (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_embd + (0 if gated else c.n_inner)
    return (wte_bytes(c.n_vocab, c.n_embd, dtype) * (1 if c.tied else 2)
            + linear_bytes(c.n_layer * wide, c.n_embd, dtype)
            + (linear_bytes(c.n_layer * c.n_inner, 2 * c.n_embd, dtype) if gated else 0)
            + linear_bytes(c.n_layer * c.n_embd * groups, c.n_inner // groups, dtype))


def estimate_load_bytes(config, dtype: str) -> int:
    """Disk a load takes: the weights, plus the position embeddings, norms, vocabulary and merges."""
    small = (config.n_ctx + 3 * config.n_layer) * (8 + 4 * config.n_embd) * 2 + (25 << 20)
    return estimate_model_bytes(config, dtype) + small


def needed_shared_buffers(model_bytes: int) -> int:
    """shared_buffers that hold models of these bytes with room beside them, in whole 64 MB."""
    need = int(model_bytes * HEADROOM_FACTOR) + HEADROOM_BYTES
    return -(-need // (64 << 20)) * (64 << 20)


def current_shared_buffers(conn: psycopg.Connection) -> int:
    return conn.execute("select setting::bigint * 8192 from pg_settings where name = 'shared_buffers'").fetchone()[0]


def model_bytes(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes on disk of each loaded model's weight partitions (what every token reads)."""
    rows = conn.execute(
        """select m.name, coalesce(pg_total_relation_size(to_regclass(format('gptsql.wte_%s', m.id))), 0)
                        + coalesce(pg_total_relation_size(to_regclass(format('gptsql.linear_%s', m.id))), 0)
           from gptsql.model m"""
    ).fetchall()
    return dict(rows)


def busy(conn: psycopg.Connection) -> bool:
    """Whether another client is connected (a generation, a psql): a restart would cut it off."""
    return conn.execute(
        "select exists (select from pg_stat_activity where backend_type = 'client backend' "
        "and pid <> pg_backend_pid())"
    ).fetchone()[0]


def check_disk(db, conn: psycopg.Connection, config, dtype: str, name: str) -> None:
    """Before a load writes anything: the embedded server's disk must hold the model and its WAL."""
    if not db.is_embedded:
        return  # a remote server's disk is not ours to see; PostgreSQL fails the load cleanly if full
    size = estimate_load_bytes(config, dtype)
    # wal_level minimal (the embedded default) does not log tables written in the transaction that
    # made them: the weights skip the WAL; anything else logs every page once.
    wal_level = conn.execute("show wal_level").fetchone()[0]
    wal = (64 << 20) if wal_level == "minimal" else size
    free = free_disk(db.embedded.data_dir)
    if free < size + wal:
        raise UserError(
            f"not enough free disk for {name}: it needs about {human(size + wal)} ({human(size)} of model, "
            f"{human(wal)} of WAL) and {db.embedded.data_dir} has {human(free)} free; free some space, "
            "unload a model (gptsql unload NAME) or use --dtype float16 (half the size)")


def follow_models(db, conn: psycopg.Connection, incoming: int = 0, replacing: str | None = None,
                  say: Say = say_stderr) -> bool:
    """Grow the embedded server's shared_buffers to hold the loaded models (plus `incoming` bytes
    about to be loaded as the model named `replacing`, which it replaces), within RAM_SHARE of the
    machine. Restarts the server when no other client is connected (then True: reconnect), otherwise
    the new size waits for the next start. A load whose models cannot be held says so. A server given
    by DSN is never changed: a load there warns when it cannot hold the model coming."""
    current = current_shared_buffers(conn)
    if not db.is_embedded:
        if incoming > current:
            say(dsn_warning(current, replacing, incoming))
        return False
    sizes = model_bytes(conn)
    sizes.pop(replacing, None)
    total = sum(sizes.values()) + incoming
    need = needed_shared_buffers(total)
    if current >= need:
        return False
    target = min(max(need, BASE_SHARED_BUFFERS), ceiling())
    if target <= current:
        # Nothing to grow into. Said by a load only: generate and predict say it of their own model.
        if incoming and total > current:
            say(f"gptsql: shared_buffers ({human(current)}, at most {RAM_SHARE:.0%} of this machine's "
                f"{human(mem_total())} of RAM) cannot hold the models ({human(total)}): they run, slower "
                "(--dtype float16 halves a model)")
        return False
    conn.execute(f"alter system set shared_buffers = '{pg_setting(target)}'")
    if target >= need:
        why = f"shared_buffers {human(current)} -> {human(target)} to hold the models ({human(total)})"
    else:
        why = (f"shared_buffers {human(current)} -> {human(target)} ({RAM_SHARE:.0%} of this machine's "
               f"{human(mem_total())} of RAM), which still cannot hold the models ({human(total)}): they run, "
               "slower (--dtype float16 halves a model)")
    if busy(conn):
        say(f"gptsql: {why}: applies at the next start of the server (other clients are connected now; "
            "`gptsql db stop` when they are done)")
        return False
    say(f"gptsql: {why}: restarting the embedded server")
    conn.close()
    with db.embedded.one_at_a_time():   # a command that finds it down meanwhile waits, not starts it too
        db.embedded.stop()
        db.embedded.start()
    return True


def warn_if_not_held(db, conn: psycopg.Connection, model: str | None, say: Say = say_stderr) -> None:
    """One line when the model (default: the most recently loaded) is larger than shared_buffers:
    it runs, slower."""
    row = conn.execute(
        "select name from gptsql.model where name = coalesce(%s, "
        "(select name from gptsql.model order by loaded_at desc, id desc limit 1))", [model]).fetchone()
    if row is None:
        return
    size = model_bytes(conn).get(row[0], 0)
    current = current_shared_buffers(conn)
    if size <= current:
        return
    if db.is_embedded:
        limit = (f"at most {RAM_SHARE:.0%} of this machine's {human(mem_total())} of RAM" if current >= ceiling()
                 else "it grows at the server's next start with no other client connected: `gptsql db stop`")
        say(f"gptsql: {row[0]} ({human(size)}) is larger than shared_buffers ({human(current)}, {limit}): it "
            "runs, slower, reading its weights through the OS page cache every token (--dtype float16 halves "
            "its size)")
    else:
        say(dsn_warning(current, row[0], size))


def dsn_warning(current: int, name: str, size: int) -> str:
    """The one line for a server given by DSN whose shared_buffers cannot hold model `name`."""
    return (f"warning: shared_buffers of this server ({human(current)}) cannot hold {name} ({human(size)}): "
            "every token reads its weights through the OS page cache, 2-3x slower per weight; raise it "
            f"(ALTER SYSTEM SET shared_buffers = '{pg_setting(needed_shared_buffers(size))}' and restart the server)")
