"""Fixtures: one database for the session (embedded by default), tiny models loaded once, and a
private server for the modules that stop and kill servers. Plain helpers are in helpers.py.

Each test module names the models and runs it uses: "the newest model" and "the latest run" are
whatever another module left, and the suite passes in any order (pytest -p randomly).

Backends (one fixture, three ways):
  default                       a private embedded PostgreSQL + pgvector in a temporary directory
  GPTSQL_TEST_DSN=...           any server you give (PostgreSQL >= 15 with pgvector >= 0.7)
  GPTSQL_TEST_BACKEND=docker    a throwaway pgvector container through testcontainers (needs a
                                Docker engine; skipped with the reason otherwise)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gptsql.server.db import Database
from helpers import PGVECTOR_IMAGE, make_hf_llama, make_hf_model, make_server

# The CLIs the tests start must take Ctrl-C as at a terminal: a session started where SIGINT is
# ignored (in the background of a shell without job control) would pass that on to every child,
# and the Ctrl-C tests would wait for a process that never heard it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def docker_dsn():
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.skip("GPTSQL_TEST_BACKEND=docker needs testcontainers: pip install testcontainers")
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # no engine on this machine
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        pytest.skip(f"GPTSQL_TEST_BACKEND=docker but no Docker engine answers at {where} "
                    f"({type(exc).__name__}: {detail}); start Docker or set DOCKER_HOST, "
                    "or run on the embedded server (unset GPTSQL_TEST_BACKEND)")
    container = PostgresContainer(PGVECTOR_IMAGE, driver=None)
    container.start()
    return container, container.get_connection_url()


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    """(Database, environment for CLI subprocesses) of the chosen backend."""
    kind = os.environ.get("GPTSQL_TEST_BACKEND") or "embedded"
    if kind not in ("embedded", "docker"):
        pytest.exit(f"GPTSQL_TEST_BACKEND={kind!r}: use 'embedded' (the default) or 'docker' "
                    "(or GPTSQL_TEST_DSN=... for a server of yours)", returncode=4)
    dsn = os.environ.get("GPTSQL_TEST_DSN")
    container = None
    if dsn:
        database = Database(dsn=dsn)
        env = {"GPTSQL_DSN": dsn}
    elif kind == "docker":
        container, dsn = docker_dsn()
        database = Database(dsn=dsn)
        env = {"GPTSQL_DSN": dsn}
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="gq-", dir="/tmp"))  # short: the socket lives inside
        database = Database(data_dir=data_dir)
        env = {"GPTSQL_DATA_DIR": str(data_dir)}
    yield database, env
    if container is not None:
        container.stop()
    elif not dsn:
        database.embedded.stop()
        shutil.rmtree(database.embedded.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database(backend):
    return backend[0]


@pytest.fixture(scope="session")
def db(database):
    conn = database.connect()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def tiny_checkpoint():
    from gptsql.loader.sources import random_model

    return random_model("tiny")


@pytest.fixture(scope="session")
def tiny(db, tiny_checkpoint):
    """Name of a loaded random:tiny model (real GPT-2 vocabulary)."""
    from gptsql.loader.load import load

    load(db, tiny_checkpoint, "random-tiny")
    return "random-tiny"


@pytest.fixture(scope="session")
def run_cli(backend):
    """Run the gptsql CLI as a user would, against the test database."""

    def run(*args, input=None, check=True, timeout=300):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
        env.update(backend[1])
        result = subprocess.run([sys.executable, "-m", "gptsql", *args], input=input, capture_output=True,
                                text=isinstance(input, str) or input is None, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"gptsql {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(directory, torch model) of a transformers-made random GPT-2."""
    directory = tmp_path_factory.mktemp("hf-tiny")
    model = make_hf_model(directory)
    return directory, model


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
    """(directory, torch model, tokenizer) of a transformers-made random Llama (grouped-query
    attention, an MLP width no multiple of n_embd, tied embeddings)."""
    directory = tmp_path_factory.mktemp("hf-llama")
    model, tokenizer = make_hf_llama(directory)
    return directory, model, tokenizer


def pytest_collection_modifyitems(items):
    """The Docker demo's tests are the steps of one scenario (the first start, a restart, `down -v`
    last): they keep the file's order in a random run (`-p randomly` shuffles before this hook)."""
    slots = [n for n, item in enumerate(items) if item.module.__name__ == "test_docker_demo"]
    steps = sorted((items[n] for n in slots), key=lambda item: item.location[1])
    for n, item in zip(slots, steps):
        items[n] = item


@pytest.fixture
def conn(database):
    """A session of the test's own, vectors as numpy arrays: its gptsql.shares setting and its share
    connections end with it."""
    from pgvector.psycopg import register_vector

    c = database.connect()
    register_vector(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def browser():
    """Chromium through its driver, a module's own (test_web, test_web_inside: the page's tests)."""
    from webpage import chromium

    yield from chromium()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """A private embedded server of the module's own (test_faults, test_hardening: they stop, kill and
    fill it) with random-tiny (fast) and random-small (slow enough to interrupt). test_web's
    `server` (the explorer) and test_durability's are their modules' own."""
    from gptsql.loader.load import load
    from gptsql.loader.sources import random_model

    data_dir = Path(tempfile.mkdtemp(prefix="gqf-", dir="/tmp"))   # short: the socket lives inside
    s = make_server(data_dir)
    conn = s.connect()
    load(conn, tiny_checkpoint, "random-tiny")
    load(conn, random_model("small"), "random-small")
    conn.close()
    yield s
    s.embedded.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tiny_checkpoint):
    """A valid random:tiny checkpoint in the Hugging Face layout (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    directory = tmp_path_factory.mktemp("checkpoint") / "good"
    directory.mkdir()
    c = tiny_checkpoint.config
    (directory / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.n_vocab,
        "n_positions": c.n_ctx, "n_embd": c.n_embd, "n_head": c.n_head, "n_layer": c.n_layer,
        "activation_function": "gelu_new"}))
    save_file({f"transformer.{k}": v for k, v in tiny_checkpoint.tensors.items()}, str(directory / "model.safetensors"))
    from gptsql.loader.sources import from_directory

    from_directory(directory)                  # the unbroken copy loads: each defect below is the cause
    return directory
