"""A small stand-in for the Hugging Face hub, on 127.0.0.1, speaking the part of the hub's HTTP
protocol that huggingface_hub's snapshot_download / hf_hub_download use:

  GET  /api/models/{repo}[/revision/{rev}]       repo info: id, sha (the commit), siblings
  GET  /api/models/{repo}/tree/{rev}?recursive=  the file listing: size, git oid, lfs {oid, size}
  HEAD /{repo}/resolve/{rev}/{file}              metadata: X-Repo-Commit, ETag (git oid), Content-Length;
                                                 for LFS files a 302 to the "CDN" with X-Linked-Etag
                                                 (the sha256) and X-Linked-Size, like the real hub
  GET  /{repo}/resolve/{rev}/{file}              the bytes of a regular file
  GET  /cdn/{sha256}                             the bytes of an LFS file, honouring Range (206)

It never sends X-Xet-* headers, so huggingface_hub takes its plain HTTP path. Every request is
logged (method, path, Range) so tests can see what was fetched, and faults can be queued per file:
"cut" (send 90% of the body, or N bytes for "cut:N", then drop the connection), "corrupt" (right size, wrong bytes) and
"short" (a Content-Length smaller than the file).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_lfs(self) -> bool:
        return self.name.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {self.size}\n").encode()

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer for LFS files."""
        return git_blob_oid(self.pointer if self.is_lfs else self.data)

    def tree_entry(self) -> dict:
        entry = {"type": "file", "path": self.name, "oid": self.oid, "size": self.size}  # LFS: the real size
        if self.is_lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str = ""

    def __post_init__(self):
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for f in sorted(self.files.values(), key=lambda f: f.name):
                digest.update(f.name.encode() + f.oid.encode())
            self.commit = digest.hexdigest()

    @classmethod
    def from_directory(cls, repo_id: str, directory: Path) -> "HubRepo":
        files = {p.name: HubFile(p.name, p.read_bytes()) for p in sorted(Path(directory).iterdir()) if p.is_file()}
        return cls(repo_id, files)


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: dict[str, list[str]] = field(default_factory=dict)  # sha256 -> queued faults, one per GET

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def fault(self, repo_id: str, filename: str, *kinds: str) -> None:
        """Queue faults for the next GETs of an LFS file (one fault per GET, in order)."""
        f = self.repos[repo_id].files[filename]
        assert f.is_lfs, "faults are served by the CDN path, which serves LFS files"
        self.faults.setdefault(f.sha256, []).extend(kinds)

    def gets(self, repo_id: str, filename: str) -> list[Request]:
        """The GETs that fetched the bytes of one file."""
        f = self.repos[repo_id].files[filename]
        path = f"/cdn/{f.sha256}" if f.is_lfs else None
        return [r for r in self.requests if r.method == "GET" and
                (r.path == path or re.fullmatch(rf"/{re.escape(repo_id)}/resolve/[^/]+/{re.escape(filename)}", r.path))]

    # ------------------------------------------------------------------------------ server
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        # Two origins, like the hub and its CDN: huggingface_hub follows redirects that stay on the
        # hub's origin, and reads an LFS file's metadata from the redirect to any other origin.
        self._servers = []
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn(self) -> str:
        host, port = self._servers[1].server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------------------- handlers
    def _find_repo(self, parts: list[str]) -> tuple[HubRepo | None, list[str]]:
        """The repo named by the first one or two path parts, and the rest."""
        for n in (2, 1):
            repo = self.repos.get("/".join(parts[:n]))
            if repo is not None:
                return repo, parts[n:]
        return None, parts[2:]

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        self.requests.append(Request("HEAD" if head else "GET", path, h.headers.get("Range")))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            return self._api(h, parts[2:])
        if parts[:1] == ["cdn"] and len(parts) == 2:
            return self._cdn(h, parts[1], head)
        repo, rest = self._find_repo(parts)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if len(rest) >= 3 and rest[0] == "resolve":
            return self._resolve(h, repo, rest[1], "/".join(rest[2:]), head)
        return self._error(h, 404, None, "Not found")

    def _api(self, h, parts: list[str]) -> None:
        repo, rest = self._find_repo(parts)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if rest[:1] == ["revision"] or not rest:
            if rest and rest[1] not in ("main", repo.commit):
                return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
            return self._json(h, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                "siblings": [{"rfilename": name} for name in sorted(repo.files)],
            })
        if rest[:1] == ["tree"]:
            return self._json(h, [f.tree_entry() for _, f in sorted(repo.files.items())])
        return self._error(h, 404, None, "Not found")

    def _resolve(self, h, repo: HubRepo, revision: str, filename: str, head: bool) -> None:
        if revision not in ("main", repo.commit):
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id", repo)
        f = repo.files.get(filename)
        if f is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", repo)
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if f.is_lfs:  # like the hub: a redirect to the CDN, the real size and sha256 in X-Linked-*
            h.send_response(302)
            for k, v in {**common, "ETag": f'"{f.oid}"', "X-Linked-Etag": f'"{f.sha256}"',
                         "X-Linked-Size": str(f.size), "Location": f"{self.cdn}/cdn/{f.sha256}",
                         "Content-Length": "0"}.items():
                h.send_header(k, v)
            h.end_headers()
            return
        h.send_response(200)
        for k, v in {**common, "ETag": f'"{f.oid}"', "Content-Length": str(f.size),
                     "Content-Type": "application/octet-stream"}.items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(f.data)

    def _cdn(self, h, sha256: str, head: bool) -> None:
        f = next((f for r in self.repos.values() for f in r.files.values() if f.is_lfs and f.sha256 == sha256), None)
        if f is None:
            return self._error(h, 404, None, "Not found")
        data, start = f.data, 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
        body = data[start:]
        queue = self.faults.get(sha256)
        fault = queue.pop(0) if queue and not head else None
        length = len(body)
        if fault == "corrupt":
            # inside the tensor data, not the header: safetensors would read it without complaint
            body = body[:-64] + bytes(b ^ 0x5A for b in body[-64:])
        elif fault == "short":
            body = body[: len(body) // 2]
            length = len(body)
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(length))
        h.send_header("ETag", f'"{sha256}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        if fault and fault.startswith("cut"):  # "cut" or "cut:N": part of the body, then the connection drops
            h.wfile.write(body[: int(fault[4:]) if fault[4:] else len(body) * 9 // 10])
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        h.wfile.write(body)

    def _json(self, h, payload) -> None:
        body = json.dumps(payload).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _error(self, h, status: int, code: str | None, message: str, repo: HubRepo | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if repo is not None:
            h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
