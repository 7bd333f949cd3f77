"""The Hugging Face hub download path, proven without the internet (issue 6).

A stand-in hub (tests/hubserver.py) serves random GPT-2s made by transformers over HTTP on
127.0.0.1, in the hub's URL scheme; `gptsql load` runs as a user runs it, in a subprocess whose
huggingface_hub is pointed at it by HF_ENDPOINT, with its cache (HF_HOME) in a temporary directory.
Nothing here is mocked inside huggingface_hub: its real snapshot_download does the HTTP.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import make_hf_model
from hubserver import FakeHub, HubRepo, closed_port

# alias -> (hub repo, shape served for it: n_layer, n_embd, n_head, n_ctx). gpt2 is the session's
# hf_tiny model; the others are tiny too, each with its own shape, so a shape can only come from
# the config of the repo the alias names.
ALIASES = {
    "gpt2": ("openai-community/gpt2", (2, 64, 4, 128)),
    "gpt2-medium": ("openai-community/gpt2-medium", (3, 32, 4, 96)),
    "gpt2-large": ("openai-community/gpt2-large", (4, 32, 2, 80)),
    "gpt2-xl": ("openai-community/gpt2-xl", (5, 48, 4, 72)),
    "distilgpt2": ("distilbert/distilgpt2", (6, 32, 4, 64)),
}
GPT2 = "openai-community/gpt2"
WEIGHTS = "model.safetensors"
TEST_NAMES = ["hubtest-first", "hubtest-resumed", "hubtest-corrupt", "hubtest-short", "hubtest-cache",
              "hubtest-never", "hubtest-distil"]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hub(hf_tiny, tmp_path_factory):
    """The stand-in hub, serving one repo per alias (openai-community/gpt2 is the hf_tiny model)."""
    server = FakeHub()
    models = {}
    for alias, (repo_id, (n_layer, n_embd, n_head, n_ctx)) in ALIASES.items():
        if alias == "gpt2":
            directory, model = hf_tiny
        else:
            directory = tmp_path_factory.mktemp(alias)
            model = make_hf_model(directory, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ctx=n_ctx, seed=1)
        server.add(HubRepo.from_directory(repo_id, directory))
        models[repo_id] = model
    server.models = models
    with server:
        yield server


@pytest.fixture(autouse=True)
def fresh_hub(request):
    """Every test starts with no queued faults and an empty request log."""
    if "hub" in request.fixturenames:
        server = request.getfixturevalue("hub")
        server.faults.clear()
        server.requests.clear()


@pytest.fixture(scope="module", autouse=True)
def drop_test_models(backend):
    """Leave the session's database as it was: the models loaded here go at the end."""
    yield
    with backend[0].connect() as conn:
        for name in TEST_NAMES:
            conn.execute("select gptsql.drop_model(%s)", [name])


def hub_env(backend, hf_home: Path, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTSQL_", "HF_", "HUGGINGFACE_"))}
    env.update(backend[1])
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
    return env


@pytest.fixture
def gptsql(backend, hub, tmp_path):
    """Run the CLI against the stand-in hub with a cache of this test's own (HF_HOME)."""

    def run(*args, hf_home: Path = tmp_path / "hf", endpoint: str | None = None, timeout=120):
        env = hub_env(backend, hf_home, endpoint or hub.endpoint)
        return subprocess.run([sys.executable, "-m", "gptsql", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    return run


def in_terminal(cmd: list[str], env: dict, timeout=120) -> tuple[int, str, str]:
    """Run with stderr on a 120-column pseudo-terminal, as in a user's shell; (status, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def snapshot_file(hf_home: Path, repo_id: str, commit: str, filename: str) -> Path:
    return hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit / filename


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_row(db, name: str):
    return db.execute("select source, n_layer, n_embd, n_head, n_ctx from gptsql.model where name = %s",
                      [name]).fetchone()


def assert_wte_loaded_exactly(db, name: str, torch_model) -> None:
    """The first and last token embeddings in the database are the served model's. The last one sits
    at the very end of model.safetensors, where the stand-in hub damages files."""
    wte = torch_model.transformer.wte.weight.detach().numpy()
    for token in (0, wte.shape[0] - 1):
        row = db.execute("select w::real[] from gptsql.wte where model_id = gptsql.model_id(%s) and token = %s",
                         [name, token]).fetchone()
        assert row is not None, f"{name}: no embedding for token {token}"
        np.testing.assert_array_equal(np.asarray(row[0], dtype=np.float32), wte[token])


def weights_gets(hub: FakeHub, repo_id: str = GPT2):
    return hub.gets(repo_id, WEIGHTS)


# ---------------------------------------------------------------------------- the happy path
def test_load_downloads_with_progress_then_uses_the_cache(hub, gptsql, backend, db, tmp_path):
    hf_home = tmp_path / "hf"
    repo = hub.repos[GPT2]
    served = repo.files[WEIGHTS]

    # 1. First load, in a terminal: downloads, shows progress, loads.
    status, out, err = in_terminal([sys.executable, "-m", "gptsql", "load", GPT2, "--name", "hubtest-first"],
                                   hub_env(backend, hf_home, hub.endpoint))
    assert status == 0, err
    assert "loaded hubtest-first (" in out and "2 layers, 64 wide, 4 heads, context 128" in out
    assert f"from hub:{GPT2}" in out
    assert "Fetching 4 files" in err and "100%" in err, f"no download progress on the terminal:\n{err}"
    total = sum(repo.files[f].size for f in ("config.json", WEIGHTS, "vocab.json", "merges.txt"))
    from tqdm import tqdm
    assert tqdm.format_sizeof(total, divisor=1000) + "B" in err, "the progress does not count the bytes"
    assert len(weights_gets(hub)) == 1
    cached = snapshot_file(hf_home, GPT2, repo.commit, WEIGHTS)
    assert cached.is_file() and sha256(cached) == served.sha256, "model.safetensors is not in HF_HOME"
    assert (cached.parent / "config.json").is_file() and (cached.parent / "vocab.json").is_file()
    assert model_row(db, "hubtest-first") == (f"hub:{GPT2}", 2, 64, 4, 128)
    assert_wte_loaded_exactly(db, "hubtest-first", hub.models[GPT2])

    # 2. Second load: from the cache; the hub serves no file again.
    fetched_before = [r for r in hub.requests if r.method == "GET" and "/api/" not in r.path]
    result = gptsql("load", GPT2, "--name", "hubtest-first", "--replace", hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    fetched_after = [r for r in hub.requests if r.method == "GET" and "/api/" not in r.path]
    assert fetched_after == fetched_before, "the second load downloaded files again"
    assert len(weights_gets(hub)) == 1

    # 3. The hub unreachable: the cache alone is enough.
    result = gptsql("load", GPT2, "--name", "hubtest-first", "--replace", hf_home=hf_home,
                    endpoint=f"http://127.0.0.1:{closed_port()}")
    assert result.returncode == 0, result.stderr
    assert "loaded hubtest-first" in result.stdout


# ------------------------------------------------------------------------ damaged downloads
def test_dropped_connection_resumes_with_a_range_request(hub, gptsql, db, tmp_path):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    served = hub.repos[GPT2].files[WEIGHTS]
    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE: the first GET
    # stops a little after the first chunk, and the connection drops.
    cut = DOWNLOAD_CHUNK_SIZE + 65536
    assert cut < served.size, "the served model is too small to cut after a whole chunk"
    hub.fault(GPT2, WEIGHTS, f"cut:{cut}")
    result = gptsql("load", GPT2, "--name", "hubtest-resumed")
    assert result.returncode == 0, result.stderr
    gets = weights_gets(hub)
    assert len(gets) == 2, gets
    assert gets[0].range is None
    match = re.fullmatch(r"bytes=(\d+)-", gets[1].range or "")
    assert match and 0 < int(match.group(1)) <= cut, f"the retry did not resume: {gets[1]}"
    cached = snapshot_file(tmp_path / "hf", GPT2, hub.repos[GPT2].commit, WEIGHTS)
    assert sha256(cached) == served.sha256
    assert_wte_loaded_exactly(db, "hubtest-resumed", hub.models[GPT2])


@pytest.mark.parametrize("fault", ["corrupt", "short"])
def test_damaged_download_is_fetched_again_and_never_loaded(hub, gptsql, db, tmp_path, fault):
    """corrupt: the right size with wrong bytes at the end of the tensors (safetensors would read
    it without complaint); short: fewer bytes than the hub said."""
    served = hub.repos[GPT2].files[WEIGHTS]
    name = f"hubtest-{fault}"
    hub.fault(GPT2, WEIGHTS, fault)
    result = gptsql("load", GPT2, "--name", name)
    assert result.returncode == 0, result.stderr
    assert "downloading it again" in result.stderr
    assert [g.range for g in weights_gets(hub)] == [None, None]
    assert sha256(snapshot_file(tmp_path / "hf", GPT2, hub.repos[GPT2].commit, WEIGHTS)) == served.sha256
    assert_wte_loaded_exactly(db, name, hub.models[GPT2])


def prefetch(backend, hub: FakeHub, hf_home: Path, repo_id: str) -> None:
    """Fill a cache with huggingface_hub alone (no database)."""
    code = f"from huggingface_hub import snapshot_download; snapshot_download({repo_id!r})"
    subprocess.run([sys.executable, "-c", code], env=hub_env(backend, hf_home, hub.endpoint), check=True,
                   capture_output=True, timeout=120)


def test_damaged_file_in_the_cache_is_fetched_again(hub, gptsql, backend, db, tmp_path):
    hf_home = tmp_path / "hf"
    prefetch(backend, hub, hf_home, GPT2)
    cached = snapshot_file(hf_home, GPT2, hub.repos[GPT2].commit, WEIGHTS)
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit-pattern in the last token embedding, same size
    blob.write_bytes(bytes(data))
    gets_before = len(weights_gets(hub))

    result = gptsql("load", GPT2, "--name", "hubtest-cache", hf_home=hf_home)
    assert result.returncode == 0, result.stderr
    assert "does not match its hash" in result.stderr and "downloading it again" in result.stderr
    assert len(weights_gets(hub)) == gets_before + 1
    assert sha256(cached) == hub.repos[GPT2].files[WEIGHTS].sha256
    assert_wte_loaded_exactly(db, "hubtest-cache", hub.models[GPT2])


def test_file_damaged_on_every_download_is_a_clear_error(hub, gptsql, db, tmp_path):
    served = hub.repos[GPT2].files[WEIGHTS]
    hub.fault(GPT2, WEIGHTS, "corrupt", "corrupt")
    result = gptsql("load", GPT2, "--name", "hubtest-never")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and WEIGHTS in last and "does not match its hash" in last, result.stderr
    assert served.sha256 in last
    assert len(weights_gets(hub)) == 2
    assert model_row(db, "hubtest-never") is None, "a damaged model was loaded"
    cache = tmp_path / "hf" / "hub" / f"models--{GPT2.replace('/', '--')}"
    assert not list(cache.glob(f"blobs/{served.sha256}*")), "the damaged file stayed in the cache"
    assert not snapshot_file(tmp_path / "hf", GPT2, hub.repos[GPT2].commit, WEIGHTS).exists()


# ------------------------------------------------------------------------ names and shapes
def test_hub_aliases():
    from gptsql.loader.sources import HUB_ALIASES

    assert HUB_ALIASES == {alias: repo for alias, (repo, _) in ALIASES.items()}


def test_aliases_resolve_to_their_repos_with_each_configs_shape(hub, backend, tmp_path):
    code = """if True:
        import json, sys
        from gptsql.loader.sources import resolve
        out = []
        for alias in sys.argv[1:]:
            ck = resolve(alias)
            c = ck.config
            out.append([alias, ck.source, ck.default_name, c.n_layer, c.n_embd, c.n_head, c.n_ctx, c.n_vocab])
        print(json.dumps(out))
    """
    result = subprocess.run([sys.executable, "-c", code, *ALIASES], env=hub_env(backend, tmp_path / "hf", hub.endpoint),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = {row[0]: row[1:] for row in json.loads(result.stdout)}
    for alias, (repo_id, shape) in ALIASES.items():
        assert got[alias] == [f"hub:{repo_id}", repo_id.rsplit("/", 1)[1], *shape, 50257], alias
    served = {r.path.split("/resolve/")[0].lstrip("/") for r in hub.requests if "/resolve/" in r.path}
    assert served == {repo for repo, _ in ALIASES.values()}


def test_load_distilgpt2_has_six_layers(hub, gptsql, db):
    result = gptsql("load", "distilgpt2", "--name", "hubtest-distil")
    assert result.returncode == 0, result.stderr
    assert "6 layers, 32 wide, 4 heads, context 64" in result.stdout
    assert model_row(db, "hubtest-distil") == ("hub:distilbert/distilgpt2", 6, 32, 4, 64)
    assert_wte_loaded_exactly(db, "hubtest-distil", hub.models["distilbert/distilgpt2"])


# ------------------------------------------------------------------------------- failures
def test_no_network_is_one_line_naming_the_offline_ways(gptsql, tmp_path):
    result = gptsql("load", "gpt2", endpoint=f"http://127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot download openai-community/gpt2 from the Hugging Face hub")
    assert "gptsql load ./" in lines[0] and "gptsql load random:tiny" in lines[0]
    assert result.stdout == ""


def test_unknown_repo_is_named(gptsql):
    result = gptsql("load", "nobody/no-such-gpt2")
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: nobody/no-such-gpt2: no such model on the Hugging Face hub "
                                     "(or it is private)")
