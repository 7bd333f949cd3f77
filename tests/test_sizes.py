"""Every GPT-2 size: the embedded server's memory follows the models, a load checks the disk first,
a model larger than shared_buffers says so. A tiny model against fake small limits (GPTSQL_MEMTOTAL
for the RAM, GPTSQL_FREE_DISK for the disk), never a real big model."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from gptsql.loader.sources import random_model
from hubserver import FakeHub, HubRepo
from gptsql.server import memory
from gptsql.server.db import Database


@pytest.fixture(scope="module")
def server():
    """A private embedded server for this file (its shared_buffers are changed and it restarts)."""
    data_dir = Path(tempfile.mkdtemp(prefix="gq17-", dir="/tmp"))
    db = Database(data_dir=data_dir)
    yield db
    db.embedded.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def gptsql(db: Database, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    clean.update({"GPTSQL_DATA_DIR": str(db.embedded.data_dir), **env})
    return subprocess.run([sys.executable, "-m", "gptsql", *args], capture_output=True, text=True,
                          env=clean, timeout=300)


def set_shared_buffers(db: Database, size: str) -> None:
    """As if the server had been started on a smaller machine: shared_buffers = size, restarted."""
    with db.connect() as conn:
        conn.execute(f"alter system set shared_buffers = '{size}'")
    db.embedded.stop()
    db.embedded.start()


def shared_buffers(db: Database) -> int:
    with db.connect() as conn:
        return memory.current_shared_buffers(conn)


def models(db: Database) -> list[str]:
    with db.connect() as conn:
        return [name for (name,) in conn.execute("select name from gptsql.model order by name")]


def keep_only(db: Database, *names: str) -> None:
    """Drop every model of the server but these: what the other tests of this file loaded, in
    whatever order they ran."""
    with db.connect() as conn:
        for name in models(db):
            if name not in names:
                conn.execute("select gptsql.drop_model(%s)", [name])


def loaded(db: Database) -> list[tuple[str, int]]:
    """(name, id) of each model: a load that wrote nothing leaves them as they were."""
    with db.connect() as conn:
        return conn.execute("select name, id from gptsql.model order by name").fetchall()


def test_the_estimate_is_the_size_on_disk(db, tiny, tiny_checkpoint):
    """The disk check and the memory sizing trust the estimate before anything is written."""
    from gptsql.loader.load import load

    load(db, tiny_checkpoint, "random-tiny-f16", dtype="float16")
    actual = memory.model_bytes(db)
    for name, dtype in (("random-tiny", "float32"), ("random-tiny-f16", "float16")):
        estimate = memory.estimate_model_bytes(tiny_checkpoint.config, dtype)
        assert abs(estimate / actual[name] - 1) < 0.1, (name, estimate, actual[name])
    db.execute("select gptsql.drop_model('random-tiny-f16')")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_estimate_packs_rows_as_postgresql_does_at_every_width(db, dtype):
    """Rows of 768-1600 floats are where the packing matters (a float32 row of 1024 takes a page of its
    own): a few hundred such rows in a model's own partitions, rolled back, against the estimate."""
    rows, fake_id, column = 300, 999_917, ("w" if dtype == "float32" else "h")
    cast = "vector" if dtype == "float32" else "halfvec"
    with db.transaction(force_rollback=True):
        db.execute("select gptsql.new_partitions(%s)", [fake_id])
        for width in (768, 1024, 1280, 1600):
            db.execute(f"truncate gptsql.wte_{fake_id}, gptsql.linear_{fake_id}")
            # random floats: nothing for PostgreSQL to compress, as in a real model
            vector = f"(select array_agg(random()::real) from generate_series(1, {width}) where i > 0)::{cast}"
            db.execute(f"insert into gptsql.wte_{fake_id} (model_id, token, {column}) "
                       f"select {fake_id}, i, {vector} from generate_series(1, {rows}) i")
            db.execute(f"insert into gptsql.linear_{fake_id} (model_id, name, block, part, grp, idx, {column}, bias) "
                       f"select {fake_id}, 'attn_proj', 0, 0, i / 64, i % 64, {vector}, 0 from generate_series(1, {rows}) i")
            for table, estimate in (("wte", memory.wte_bytes), ("linear", memory.linear_bytes)):
                actual = db.execute(f"select pg_total_relation_size('gptsql.{table}_{fake_id}')").fetchone()[0]
                expected = estimate(rows, width, dtype)
                assert abs(expected / actual - 1) < 0.1, (table, width, dtype, expected, actual)


def test_the_estimate_packs_gate_rows_that_carry_their_up_row(db):
    """A SwiGLU gate row holds its up row too: at SmolLM2's widths (576: 135M; 960: 360M) two float32
    vectors no longer share a page with another row, as the estimate of a row twice as wide says."""
    rows, fake_id = 120, 999_918
    with db.transaction(force_rollback=True):
        db.execute("select gptsql.new_partitions(%s)", [fake_id])
        for width in (576, 960):
            db.execute(f"truncate gptsql.linear_{fake_id}")
            vector = f"(select array_agg(random()::real) from generate_series(1, {width}) where i > 0)::vector"
            db.execute(f"insert into gptsql.linear_{fake_id} (model_id, name, block, part, grp, idx, w, bias, up_w) "
                       f"select {fake_id}, 'c_fc', 0, 0, i / 64, i % 64, {vector}, 0, {vector} from generate_series(1, {rows}) i")
            actual = db.execute(f"select pg_total_relation_size('gptsql.linear_{fake_id}')").fetchone()[0]
            expected = memory.linear_bytes(rows, 2 * width, "float32")
            assert abs(expected / actual - 1) < 0.1, (width, expected, actual)


# The shapes OpenAI published (config.json of openai-community/gpt2, -medium, -large, -xl on the hub):
# n_layer, n_embd, n_head; every one has 1024 places and GPT-2's 50257 tokens.
PUBLISHED_SHAPES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
                    "gpt2-xl": (48, 1600, 25)}


def test_shapes_are_the_published_ones_and_big_ones_are_made_one_tensor_at_a_time():
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    for shape, (n_layer, n_embd, n_head) in PUBLISHED_SHAPES.items():
        ck = random_model(shape)
        c = ck.config
        assert (c.n_layer, c.n_embd, c.n_head, c.n_ctx, c.n_vocab) == (n_layer, n_embd, n_head, 1024, 50257), shape
        with torch.device("meta"):
            model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head))
        assert ck.n_params() == model.num_parameters(), shape
        if shape in ("gpt2", "gpt2-medium"):
            continue
        first = ck.tensors["h.0.attn.c_proj.weight"]
        assert first.dtype.name == "float32" and first.shape == (c.n_embd, c.n_embd)
        assert not ck.tensors.made, "a big random model must not keep its tensors"
        assert (ck.tensors["h.0.attn.c_proj.weight"] == first).all()   # made again, the same


def test_a_load_without_the_disk_for_it_writes_nothing(server):
    before = loaded(server)
    result = gptsql(server, "load", "random:tiny", "--replace", GPTSQL_FREE_DISK="5MB")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: not enough free disk for random-tiny"), lines
    needed = memory.human(memory.estimate_load_bytes(random_model("tiny").config, "float32") + (64 << 20))
    assert f"needs about {needed}" in lines[0] and "has 5 MB free" in lines[0], lines[0]
    assert loaded(server) == before


def test_a_bench_without_the_disk_for_its_model_writes_nothing(server):
    before = loaded(server)
    result = gptsql(server, "bench", "--shape", "tiny", GPTSQL_FREE_DISK="5MB")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: not enough free disk for bench-tiny-float32") and "has 5 MB free" in lines[0]
    assert loaded(server) == before


def test_the_first_generate_checks_the_disk_before_it_loads_gpt2(server, hf_tiny, tmp_path):
    """With no model loaded, generate loads gpt2 from the hub (here a stand-in serving a tiny one):
    that load checks the disk like any other."""
    keep_only(server)
    hub = FakeHub()
    hub.add(HubRepo.from_directory("openai-community/gpt2", hf_tiny[0]))
    with hub:
        result = gptsql(server, "generate", "-n", "2", "Hello", GPTSQL_FREE_DISK="5MB", HF_ENDPOINT=hub.endpoint,
                        HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()    # huggingface_hub's "Fetching 4 files" between them
    assert lines[0].startswith("no model loaded yet: loading gpt2"), lines
    assert lines[-1].startswith("Error: not enough free disk for gpt2"), lines
    assert sum("Error" in line for line in lines) == 1, lines
    assert models(server) == []


def test_shared_buffers_are_sized_for_all_the_loaded_models(server, monkeypatch):
    """The loaded models (less the one a load replaces) and the one coming, x1.2 + 256 MB, in whole
    64 MB: pretend sizes, with another client connected so that the server is not restarted."""
    set_shared_buffers(server, "32MB")
    monkeypatch.setenv("GPTSQL_MEMTOTAL", "64GB")
    monkeypatch.setattr(memory, "model_bytes", lambda conn: {"a": 700 << 20, "b": 900 << 20, "old": 5 << 30})
    said = []
    try:
        with server.connect() as _other_client, server.connect() as conn:
            assert not memory.follow_models(server, conn, incoming=300 << 20, replacing="old", say=said.append)
            pending = conn.execute("select setting from pg_file_settings where name = 'shared_buffers' "
                                   "order by seqno desc limit 1").fetchone()[0]
    finally:
        with server.connect() as conn:
            conn.execute("alter system set shared_buffers = '32MB'")
    # (700 + 900 + 300) MB x 1.2 + 256 MB = 2536 MB -> 2560 MB
    assert pending == "2560MB", pending
    assert said == ["gptsql: shared_buffers 32 MB -> 2.5 GB to hold the models (1.9 GB): applies at the next "
                    "start of the server (other clients are connected now; `gptsql db stop` when they are done)"]


def test_shared_buffers_grow_to_hold_the_models(server):
    set_shared_buffers(server, "32MB")
    pid = server.embedded.pid()
    # A machine of 640 MB: at most 320 MB of shared_buffers, enough for the tiny model and headroom.
    result = gptsql(server, "load", "random:tiny", "--replace", GPTSQL_MEMTOTAL="640MB")
    assert result.returncode == 0, result.stderr
    assert "shared_buffers 32 MB -> 320 MB" in result.stderr and "restarting" in result.stderr, result.stderr
    assert shared_buffers(server) == 320 << 20
    assert server.embedded.pid() != pid
    # Enough already: no second restart.
    pid = server.embedded.pid()
    result = gptsql(server, "load", "random:tiny", "--replace", "--name", "again", GPTSQL_MEMTOTAL="640MB")
    assert result.returncode == 0 and "shared_buffers" not in result.stderr, result.stderr
    assert server.embedded.pid() == pid


def test_a_generation_grows_shared_buffers_for_models_loaded_before(server):
    """A model loaded while shared_buffers was small (or on a smaller machine): the next generate
    (or predict) grows it, saying so, before it runs."""
    keep_only(server, "random-tiny")
    if "random-tiny" not in models(server):
        assert gptsql(server, "load", "random:tiny", "--replace").returncode == 0
    set_shared_buffers(server, "8MB")
    for command in (["generate", "-m", "random-tiny", "-n", "2", "-t", "0", "Hello"],
                    ["predict", "-m", "random-tiny", "Hello"]):
        result = gptsql(server, *command, GPTSQL_MEMTOTAL="640MB")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
        assert len(lines) == 1 and "shared_buffers 8 MB -> 320 MB to hold the models" in lines[0], lines
        assert shared_buffers(server) == 320 << 20
        set_shared_buffers(server, "8MB")


def test_shared_buffers_at_the_machines_limit_say_they_cannot_hold_the_models(server):
    set_shared_buffers(server, "8MB")
    result = gptsql(server, "load", "random:tiny", "--replace", GPTSQL_MEMTOTAL="32MB")   # at most 16 MB
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
    assert len(lines) == 1 and "shared_buffers 8 MB -> 16 MB (50% of this machine's 32 MB of RAM), which still " \
                               "cannot hold the models" in lines[0], lines
    assert shared_buffers(server) == 16 << 20


def test_a_load_with_shared_buffers_at_the_limit_says_the_models_cannot_be_held(server):
    set_shared_buffers(server, "8MB")
    with server.connect() as conn:     # the models loaded, and the one coming (estimated)
        total = memory.human(sum(memory.model_bytes(conn).values())
                             + memory.estimate_model_bytes(random_model("tiny").config, "float32"))
    result = gptsql(server, "load", "random:tiny", "--name", "over", GPTSQL_MEMTOTAL="16MB")   # at most 8 MB
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
    assert lines == [f"gptsql: shared_buffers (8 MB, at most 50% of this machine's 16 MB of RAM) cannot hold the "
                     f"models ({total}): they run, slower (--dtype float16 halves a model)"], lines
    assert shared_buffers(server) == 8 << 20
    assert gptsql(server, "unload", "over", "--yes").returncode == 0


def test_a_load_at_a_terminal_shows_progress_with_an_estimate(server):
    """At a terminal (a pty, through script(1)) the load draws a bar: the model's estimated size,
    the stage, rows done of all, time spent and time left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env.update(GPTSQL_DATA_DIR=str(server.embedded.data_dir), COLUMNS="160")
    result = subprocess.run(["script", "-qec", f"{sys.executable} -m gptsql load random:small --name shown --replace",
                             "/dev/null"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)    # the terminal's colours and moves
    size = memory.human(memory.estimate_model_bytes(random_model("small").config, "float32"))
    assert f"loading shown (~{size}): " in shown, shown
    assert re.search(r"\d+/\d+ rows \d+:\d\d:\d\d left \d+:\d\d:\d\d", shown), shown
    assert "loaded shown (" in shown


def test_no_restart_while_another_client_is_connected(server):
    set_shared_buffers(server, "32MB")
    pid = server.embedded.pid()
    with psycopg.connect(server.embedded.dsn()):        # a generation, a psql session...
        result = gptsql(server, "load", "random:tiny", "--replace", GPTSQL_MEMTOTAL="640MB")
        assert result.returncode == 0, result.stderr
        assert "applies at the next start" in result.stderr, result.stderr
        assert server.embedded.pid() == pid
        assert shared_buffers(server) == 32 << 20
    server.embedded.stop()
    server.embedded.start()
    assert shared_buffers(server) == 320 << 20


def test_a_model_larger_than_shared_buffers_runs_and_says_so_once(server):
    if "random-tiny" not in models(server):
        assert gptsql(server, "load", "random:tiny", "--replace").returncode == 0
    set_shared_buffers(server, "8MB")       # the tiny model's weights take ~16 MB
    with server.connect() as conn:
        size = memory.human(memory.model_bytes(conn)["random-tiny"])
    small_machine = {"GPTSQL_MEMTOTAL": "16MB"}  # nothing to grow into
    result = gptsql(server, "generate", "-m", "random-tiny", "-n", "3", "-t", "0", "Hello", **small_machine)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello") and len(result.stdout) > len("Hello\n")
    lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
    assert len(lines) == 1 and f"random-tiny ({size}) is larger than shared_buffers (8 MB" in lines[0], lines
    # every command that runs the model: predict, and trace / attention / lens with a prompt
    for command in (["predict", "-m", "random-tiny", "Hello"], ["trace", "-m", "random-tiny", "-n", "1", "Hello"]):
        result = gptsql(server, *command, **small_machine)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
        assert len(lines) == 1 and f"random-tiny ({size}) is larger than shared_buffers (8 MB" in lines[0], lines
    # With --dsn the server is someone else's: one warning naming the setting, nothing changed.
    dsn = {**small_machine, "GPTSQL_DSN": server.embedded.dsn(), "GPTSQL_MEMTOTAL": "64GB"}
    pid = server.embedded.pid()
    result = gptsql(server, "generate", "-m", "random-tiny", "-n", "3", "-t", "0", "Hello", **dsn)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: shared_buffers of this server (8 MB) cannot hold random-tiny ({size})"), lines
    # A load there: the same one line for the model coming (its estimated size), nothing changed.
    result = gptsql(server, "load", "random:tiny", "--name", "more", **dsn)
    assert result.returncode == 0, result.stderr
    estimate = memory.human(memory.estimate_model_bytes(random_model("tiny").config, "float32"))
    lines = [line for line in result.stderr.splitlines() if "shared_buffers" in line]
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: shared_buffers of this server (8 MB) cannot hold more ({estimate})"), lines
    assert server.embedded.pid() == pid and shared_buffers(server) == 8 << 20
    # A server that holds it: no line.
    set_shared_buffers(server, "64MB")
    for command in (["load", "random:tiny", "--name", "more", "--replace"], ["generate", "-m", "more", "-n", "2", "Hi"]):
        result = gptsql(server, *command, **dsn)
        assert result.returncode == 0 and "shared_buffers" not in result.stderr, result.stderr
