"""Issue 13, under load and attack: the socket fallback in /tmp and the psql password."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gptsql.server.db import Database, psql_command

from test_faults import make_server


# ------------------------------------------------------------- 4: the /tmp socket fallback
@pytest.fixture
def long_server():
    base = Path(tempfile.mkdtemp(prefix="gqh-", dir="/tmp"))
    s = make_server(base / ("long-" * 20))
    assert str(s.embedded.socket_dir).startswith("/tmp/gptsql-")
    yield s
    s.embedded.stop()
    sock = s.embedded.socket_dir
    if sock.is_symlink():
        sock.unlink()
    else:
        shutil.rmtree(sock, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_planted_socket_dir_refused(long_server):
    """A /tmp/gptsql-HASH folder someone else made first (0777) is refused with one line, not used."""
    sock = long_server.embedded.socket_dir
    sock.mkdir(mode=0o777)
    sock.chmod(0o777)
    os.chown(sock, *long_server.embedded._server_uid())  # the right owner: only the mode is wrong
    result = long_server.cli("db", "start", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "not 0700" in result.stderr and str(sock) in result.stderr
    assert long_server.embedded.pid() is None


@pytest.mark.slow
def test_foreign_socket_dir_refused(long_server):
    """A 0700 folder of another user (here: root's or a stranger's uid) is refused too."""
    sock = long_server.embedded.socket_dir
    sock.mkdir(mode=0o700)
    os.chown(sock, 12345, 12345)
    result = long_server.cli("db", "start", check=False)
    assert result.returncode == 1 and "belongs to uid 12345" in result.stderr


@pytest.mark.slow
def test_planted_socket_symlink_refused_not_followed(long_server):
    """A symlink of that name is refused, and its target is neither chowned nor chmodded."""
    target = Path(tempfile.mkdtemp(prefix="gqh-target-", dir="/tmp"))
    try:
        target.chmod(0o755)
        before = os.stat(target)
        sock = long_server.embedded.socket_dir
        sock.symlink_to(target)
        result = long_server.cli("db", "start", check=False)
        assert result.returncode == 1 and "symbolic link" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        after = os.stat(target)
        assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    finally:
        shutil.rmtree(target, ignore_errors=True)


# ------------------------------------------------------------- 5: psql without the password in argv
def test_psql_password_not_in_argv():
    db = Database(dsn="host=/nowhere dbname=gptsql user=alice password=s3cret-pw")
    argv, env = psql_command(db, ["-c", "select 1"])
    assert not any("s3cret-pw" in arg for arg in argv)
    assert env["PGPASSWORD"] == "s3cret-pw"
    assert "user=alice" in argv[1] and "dbname=gptsql" in argv[1] and argv[2:] == ["-c", "select 1"]


def test_psql_uri_password_not_in_argv():
    db = Database(dsn="postgresql://bob:p%40ss@localhost:5433/gptsql")
    argv, env = psql_command(db, [])
    assert not any("p@ss" in arg or "p%40ss" in arg for arg in argv)
    assert env["PGPASSWORD"] == "p@ss"
