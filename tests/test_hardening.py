"""Issue 13, under load and attack: the socket fallback in /tmp and the psql password."""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import shutil
import tempfile
from pathlib import Path

import pytest

from gptsql.server.db import Database, psql_command, wait_for

from helpers import LONG_RUN, PROMPT, Streamed, blocking, broken_copy, held_after, make_server, rewrite_tensors


# ------------------------------------------------------------- 4: the /tmp socket fallback
@pytest.fixture
def long_server():
    base = Path(tempfile.mkdtemp(prefix="gqh-", dir="/tmp"))
    base.chmod(0o711)   # the server's user passes it as root; the folders above are another test's (test_hardening)
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


def test_db_psql_gets_the_password_by_its_environment(server, tmp_path):
    """gptsql db psql as a user runs it: the psql it starts (a stand-in on PATH that writes down its
    arguments and PGPASSWORD) has the password in its environment, not among its arguments."""
    fake = tmp_path / "psql"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\nprintf "%s" "$PGPASSWORD" > "$0.env"\n')
    fake.chmod(0o755)
    env = {**server.env, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "GPTSQL_DSN": server.embedded.dsn() + " password=s3cret-pw"}   # trust: the password is not checked
    result = subprocess.run([sys.executable, "-m", "gptsql", "db", "psql", "-c", "select 1"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "psql.argv").read_text()
    assert "select 1" in argv and f"host={server.embedded.socket_dir}" in argv and "s3cret-pw" not in argv
    assert (tmp_path / "psql.env").read_text() == "s3cret-pw"


# ------------------------------------------------------------- 1: more clients than the server takes
def hold_every_slot(s) -> list:
    """Open connections until the server refuses one; return them (the server is full)."""
    import psycopg

    held = []
    while True:
        try:
            held.append(psycopg.connect(s.embedded.dsn(), autocommit=True))
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc) or "connection slots" in str(exc), exc
            return held
        assert len(held) < 500, "the server never refused a connection"


@pytest.mark.slow
def test_full_server_is_not_restarted(server):
    """With every slot taken, a command waits (saying so) instead of restarting the server; a running
    generation survives, and the command goes on once a slot is free."""
    gen = Streamed(server, "generate", "-m", "random-small", "-n", "40", "-t", "0", PROMPT)
    gen.wait_for_output(len(PROMPT) + 5)
    pid = server.embedded.pid()
    held = hold_every_slot(server)
    try:
        models = Streamed(server, "models")
        assert wait_for(lambda: b"waiting for a free connection" in models.err or models.proc.poll() is not None,
                        60), models.err
        for c in held[:3]:      # once it waits: a slot comes free
            c.close()
        rc, out, err = models.finish()
    finally:
        for c in held:
            c.close()
    assert rc == 0, err
    assert "waiting for a free connection" in err and out.strip()
    assert server.embedded.pid() == pid
    rc, out, err = gen.finish()
    assert rc == 0, err


@pytest.mark.slow
def test_many_commands_at_once(server):
    """More generations at once than free slots (all but 5 held until one command says it waits, the five
    stopped at their first step meanwhile): every one succeeds, the extra ones after waiting for a slot;
    the server is never restarted."""
    import threading

    pid = server.embedded.pid()
    held = hold_every_slot(server)
    for c in held[:5]:
        c.close()
    # Every step records its candidates in gptsql.step_logit: this lock, released with the held
    # slots, keeps the first five generations in their first step, so the others must wait for a slot
    # however slowly the machine starts them.
    held[-1].execute("begin")
    held[-1].execute("lock table gptsql.step_logit in exclusive mode")
    gens = []

    def release_once_one_waits():
        wait_for(lambda: any(b"waiting for a free connection" in g.err for g in list(gens)), 60)
        for c in held[5:]:
            c.close()

    release = threading.Thread(target=release_once_one_waits)
    release.start()
    try:
        gens.extend(Streamed(server, "generate", "-m", "random-tiny", "-n", "3", "-t", "0", PROMPT)
                    for _ in range(30))
        results = [gen.finish(timeout=300) for gen in gens]
    finally:
        release.join()
    failed = [err for rc, out, err in results if rc != 0]
    assert not failed, failed[:3]
    assert len({out for rc, out, err in results}) == 1
    assert any("waiting for a free connection" in err for rc, out, err in results)
    assert server.embedded.pid() == pid


@pytest.mark.slow
def test_a_full_server_that_stays_full_is_one_line_after_the_wait(server):
    """Nobody frees a slot: the command says it waits, then fails in one line naming
    max_connections (GPTSQL_CONNECT_WAIT shortens the 30 s wait); the server is not restarted."""
    pid = server.embedded.pid()
    held = hold_every_slot(server)
    try:
        result = subprocess.run([sys.executable, "-m", "gptsql", "models"], capture_output=True, text=True,
                                env={**server.env, "GPTSQL_CONNECT_WAIT": "2"}, timeout=120)
    finally:
        for c in held:
            c.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("waiting for a free connection") and "up to 2 s" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("Error: the server refused a connection for 2 s")
    assert "max_connections" in lines[1] and "Traceback" not in result.stderr
    assert server.embedded.pid() == pid


# Each child makes its Database, says "ready", then waits for its stdin to close: all of them
# connect together, to a server that is not running.
CONNECT_TOGETHER = """
import sys
from gptsql.server.db import Database
from gptsql.errors import UserError
db = Database()
print("ready", flush=True)
sys.stdin.read()
try:
    conn = db.connect()
    print(conn.execute("select pg_postmaster_start_time()").fetchone()[0], flush=True)
except UserError as exc:
    print("Error:", exc, flush=True)
"""


def connect_together(s, n: int = 6) -> None:
    children = [subprocess.Popen([sys.executable, "-c", CONNECT_TOGETHER], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s.env)
                for _ in range(n)]
    for child in children:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
    for child in children:
        child.stdin.close()
    said = [child.stdout.read().strip() for child in children]
    for child in children:
        child.wait(120)
    assert not [line for line in said if line.startswith("Error")], said
    assert len(set(said)) == 1, said          # one server, started once
    assert s.embedded.is_running()


@pytest.mark.slow
def test_commands_finding_the_server_down_start_it_once(server):
    """Commands that find the server stopped at the same time: one starts it, the others wait for
    it and connect (each ran pg_ctl start: all but one failed on postmaster.pid's lock, and one that
    saw the new pid file before its socket stopped the server being started). The same with no data
    directory yet: one runs initdb."""
    server.embedded.stop()
    connect_together(server)
    fresh = make_server(Path(tempfile.mkdtemp(prefix="gqs-", dir="/tmp")) / "data")
    try:
        connect_together(fresh)
    finally:
        fresh.embedded.stop()
        shutil.rmtree(fresh.embedded.data_dir.parent, ignore_errors=True)


# ------------------------------------------------------------- 6: SIGTERM and SIGHUP cancel like Ctrl-C
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_cancels_statement_and_marks_run(server, signum):
    with held_after(server, 4, *LONG_RUN) as (gen, _, held, recorded):
        gen.proc.send_signal(signum)             # while a step waits for the lock
        rc, out, err = gen.finish()
    assert rc == 130, err
    assert err.strip() == f"interrupted after {recorded} tokens (run {held})"
    run_id = held
    conn = server.connect()
    status = conn.execute("select status from gptsql.run where id = %s", [run_id]).fetchone()[0]
    assert status == "interrupted"
    # No statement of the generation runs on: the lead's step, nor the workers' shares (the default).
    active = lambda: conn.execute("select count(*) from pg_stat_activity where state = 'active' "  # noqa: E731
                                  "and query like '%%gptsql.%%' and pid <> pg_backend_pid()").fetchone()[0]
    assert wait_for(lambda: active() == 0, 10), active()


@pytest.mark.slow
def test_a_reader_that_stops_reading_interrupts_the_run(server):
    """`gptsql generate ... | head -c 40`: the pipe closes under the stream (EPIPE: Python ignores
    SIGPIPE), the run is marked interrupted, as after Ctrl-C, and no statement of it runs on; it
    was left 'running' until the next command marked it failed ('cut off')."""
    conn = server.connect()
    newest = conn.execute("select coalesce(max(id), 0) from gptsql.run").fetchone()[0]
    gen = subprocess.Popen([sys.executable, "-m", "gptsql", "generate", "-m", "random-small", "-n", "250", "-t", "0",
                            PROMPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server.env)
    assert len(gen.stdout.read(len(PROMPT) + 10)) == len(PROMPT) + 10
    gen.stdout.close()                      # as head does once it has its bytes
    err = gen.stderr.read().decode()
    gen.wait(60)
    assert "Traceback" not in err, err
    status = conn.execute("select status from gptsql.run where id > %s", [newest]).fetchall()
    assert status == [("interrupted",)]
    active = lambda: conn.execute("select count(*) from pg_stat_activity where state = 'active' "  # noqa: E731
                                  "and query like '%%gptsql.%%' and pid <> pg_backend_pid()").fetchone()[0]
    assert wait_for(lambda: active() == 0, 10), active()


# ------------------------------------------------------------- 7: loading under a name in use
@pytest.mark.slow
def test_load_under_existing_name_needs_replace(server):
    conn = server.connect()
    before = conn.execute("select id, (select count(*) from gptsql.run r where r.model_id = m.id) "
                          "from gptsql.model m where name = 'random-tiny'").fetchone()
    result = server.cli("load", "random:tiny", "--name", "random-tiny", check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"its {before[1]} recorded run" in result.stderr and "--replace" in result.stderr
    assert conn.execute("select id from gptsql.model where name = 'random-tiny'").fetchone()[0] == before[0]


def test_load_under_existing_name_asks_at_a_terminal(server):
    """At a terminal (a pty, through script(1)) the load asks, naming the runs that would go; no
    keeps the model and its runs."""
    conn = server.connect()
    before = conn.execute("select id, (select count(*) from gptsql.run r where r.model_id = m.id) "
                          "from gptsql.model m where name = 'random-tiny'").fetchone()
    result = subprocess.run(["script", "-qec", f"{sys.executable} -m gptsql load random:tiny --name random-tiny",
                             "/dev/null"], input="n\n", capture_output=True, text=True, env=server.env, timeout=120)
    assert result.returncode == 0, result.stdout
    assert f'Replace model "random-tiny" and its {before[1]} recorded run' in result.stdout, result.stdout
    assert "nothing loaded" in result.stdout
    assert conn.execute("select id from gptsql.model where name = 'random-tiny'").fetchone()[0] == before[0]


def test_a_model_loaded_while_the_load_asks_is_not_replaced(server):
    """The load asks about the model it found; another load under that name while it asks (the
    question stopped at a terminal) replaces it first: 'y' then loads nothing, in one line, and the
    other load's model and runs stay (it deleted whatever was there by then)."""
    server.cli("load", "random:tiny", "--name", "racing", "--replace")
    asking = subprocess.Popen(["script", "-qec", f"{sys.executable} -m gptsql load random:tiny --name racing",
                               "/dev/null"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=server.env)
    said = b""
    while b"Replace model" not in said:
        chunk = os.read(asking.stdout.fileno(), 4096)
        assert chunk, said
        said += chunk
    server.cli("load", "random:tiny", "--name", "racing", "--replace")
    conn = server.connect()
    theirs = conn.execute("select id from gptsql.model where name = 'racing'").fetchone()[0]
    conn.execute("select gptsql.generate('Hi', 1, model => 'racing')")
    asking.stdin.write(b"y\n")
    asking.stdin.close()
    said += asking.stdout.read()
    assert asking.wait(120) == 1, said
    assert b"was loaded by another command" in said and b"nothing loaded" in said and b"Traceback" not in said
    assert conn.execute("select id, (select count(*) from gptsql.run where model_id = m.id) from gptsql.model m "
                        "where name = 'racing'").fetchone() == (theirs, 1)
    server.cli("unload", "racing", "--yes")


def test_load_with_empty_name_refused(server):
    result = server.cli("load", "random:tiny", "--name", "", check=False)
    assert result.returncode == 1 and result.stderr.startswith("Error: --name is empty")


# ------------------------------------------------------------- 3: private files, no prompts in the log
@pytest.mark.slow
def test_log_is_private_and_holds_no_prompt(server):
    import stat as st

    import psycopg

    secret = "my bank PIN is 4921-zq"
    result = server.cli("generate", "-m", "no-such-model-here", secret, check=False)
    assert result.returncode == 1
    conn = server.connect()
    with pytest.raises(Exception):
        # The text as psql sends it: the prompt inside the statement, not a parameter.
        conn.execute(f"select gptsql.generate('{secret}', 1, model => 'no-such-model-here')".encode())
    # Errors whose message quotes what was typed: a syntax error (the words near it), a bad value.
    for typed in (f"select gptsql.generate('Once' '{secret}')", f"select gptsql.detokenize('{{{secret}}}')"):
        with pytest.raises(psycopg.Error, match="4921"):
            conn.execute(typed.encode())
    conn.close()
    log = server.embedded.log
    assert secret not in log.read_text(errors="replace")
    assert st.S_IMODE(log.stat().st_mode) == 0o600
    assert st.S_IMODE(server.embedded.data_dir.stat().st_mode) & 0o066 == 0


@pytest.mark.slow
def test_an_earlier_versions_log_and_data_directory_are_made_private(server):
    """Versions before left server.log 0644 in a 0755 data directory: the next start makes both the
    owner's only (as root the server's user passes the data directory by its ACL entry: x, no more)."""
    import stat as st

    server.embedded.stop()
    server.embedded.log.chmod(0o644)
    server.embedded.data_dir.chmod(0o755)
    server.connect().close()
    assert st.S_IMODE(server.embedded.log.stat().st_mode) == 0o600
    assert st.S_IMODE(server.embedded.data_dir.stat().st_mode) & 0o067 == 0   # group: x at most; others: nothing


def test_a_data_directory_of_an_earlier_version_gets_this_versions_connection_limit(server):
    """Settings are written at initdb: a data directory made when the limit was 40 is raised to
    100 at the next start, and a setting missing from it is added; a value the user chose stays."""
    conf = server.embedded.pgdata / "postgresql.auto.conf"
    server.embedded.stop()
    text = conf.read_text()
    try:
        kept = [line for line in text.splitlines() if not line.startswith(("max_connections", "jit"))]
        conf.write_text("\n".join(kept + ["max_connections = 40", "work_mem = '64MB'"]) + "\n")
        conn = server.connect()
        settings = dict(conn.execute("select name, setting from pg_settings where name in "
                                     "('max_connections', 'jit', 'work_mem')").fetchall())
        conn.close()
        assert settings == {"max_connections": "100", "jit": "off", "work_mem": str(64 * 1024)}
    finally:
        server.embedded.stop()
        conf.write_text(text)


# ------------------------------------------------------------- 8: unload during a generation
@pytest.mark.slow
@pytest.mark.parametrize("removal", [["unload", "doomed", "--yes"],
                                     ["load", "random:tiny", "--name", "doomed", "--replace"]])
def test_a_model_is_not_removed_while_it_generates(server, removal):
    """An unload, or a load under the same name, while a generation runs on the model (held at a
    step): refused in one line naming the run, as `runs drop` refuses a running run (it deleted
    the running run without a word, or failed with 'deadlock detected'); the generation goes on
    and finishes, and the model can be removed once it has."""
    server.cli("load", "random:small", "--name", "doomed", "--replace")
    with held_after(server, 2, "generate", "-m", "doomed", "-n", "30", "-t", "0", PROMPT) as (gen, _, run_id, _n):
        refused = server.cli(*removal, check=False, timeout=60)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f'Error: model "doomed" is generating (running run {run_id})' in refused.stderr
    assert "Ctrl-C" in refused.stderr and "deadlock" not in refused.stderr
    rc, out, err = gen.finish()
    assert rc == 0, err
    conn = server.connect()
    assert conn.execute("select status from gptsql.run where id = %s", [run_id]).fetchone()[0] == "done"
    # The SQL API refuses it too (a run left open from psql: its connection is alive).
    opened = server.connect()
    left_open = opened.execute("select run_id from gptsql.start_run('doomed', 'Hi')").fetchone()[0]
    with pytest.raises(Exception, match='model "doomed" is generating'):
        conn.execute("select gptsql.drop_model('doomed')")
    opened.execute("select gptsql.finish_run(%s, 'interrupted')", [left_open])
    opened.close()
    server.cli(*removal)


@pytest.mark.slow
def test_a_load_killed_after_its_commit_has_replaced_the_model(server):
    """kill -9 during the ANALYZE that follows the commit (stopped there by a lock on gptsql.token):
    no "loaded" line, and the new model is in place, whole, as the README says; the old one's
    tables are gone."""

    server.cli("load", "random:tiny", "--name", "analyzed", "--replace")
    conn = server.connect()
    old = conn.execute("select id from gptsql.model where name = 'analyzed'").fetchone()[0]
    with blocking(server, "lock gptsql.token in share update exclusive mode") as blocked:
        loader = Streamed(server, "load", "random:small", "--name", "analyzed", "--replace")
        (backend, query), = blocked(1, loader)
        assert query.startswith("analyze gptsql.token"), query
        loader.proc.send_signal(signal.SIGKILL)
        rc, out, err = loader.finish()
    assert rc == -signal.SIGKILL and "loaded" not in out
    assert wait_for(lambda: conn.execute("select count(*) from pg_stat_activity where pid = %s",
                                         [backend]).fetchone()[0] == 0, 30)
    new, n_layer = conn.execute("select id, n_layer from gptsql.model where name = 'analyzed'").fetchone()
    assert new != old and n_layer == 4
    assert conn.execute("select gptsql.generate(%s, 3, model => 'analyzed')", [PROMPT]).fetchone()[0]
    assert conn.execute("select count(*) from pg_class where relname in (%s, %s)",
                        [f"wte_{old}", f"linear_{old}"]).fetchone()[0] == 0
    server.cli("unload", "analyzed", "--yes")


# ------------------------------------------------------------- 2: a load or unload of B never blocks A
def answers_without_waiting(database, model: str) -> None:
    """predict and generate on `model` from a fresh connection that gives up on any lock after 1 s."""
    with database.connect() as conn:
        conn.execute("set lock_timeout = '1s'")
        assert len(conn.execute("select * from gptsql.predict('Hello there', 3, %s)", [model]).fetchall()) == 3
        assert conn.execute("select gptsql.generate('Hello', 2, model => %s)", [model]).fetchone()[0]


@pytest.mark.parametrize("stage", ["vocabulary", "block 1/2", "analyze"])
def test_load_of_another_model_blocks_no_generation(database, db, tiny, tiny_checkpoint, stage):
    """A load of model B (replacing one of that name) held open inside its transaction, at the
    start, among the big tables and after attaching them: model A still answers."""
    import threading

    from gptsql.loader.load import load

    load(db, tiny_checkpoint, "lock-b")
    reached, release = threading.Event(), threading.Event()

    def progress(at, done, total):
        if at == stage:
            reached.set()
            assert release.wait(60)

    failed = []
    loader = threading.Thread(target=lambda: failed.append(None) if load(
        database.connect(), tiny_checkpoint, "lock-b", progress=progress) is None else None)
    loader.start()
    try:
        assert reached.wait(60), "the load never got there"
        answers_without_waiting(database, tiny)
    finally:
        release.set()
        loader.join(60)
    assert not loader.is_alive() and not failed
    answers_without_waiting(database, "lock-b")
    # The replaced model's big tables are gone: one partition per model, nothing left over.
    models = db.execute("select count(*) from gptsql.model").fetchone()[0]
    for parent in ("gptsql.wte", "gptsql.linear"):
        assert db.execute("select count(*) from pg_inherits where inhparent = %s::regclass",
                          [parent]).fetchone()[0] == models
    assert db.execute("select count(*) from gptsql.leftover_statements()").fetchone()[0] == 0


def test_unload_of_another_model_blocks_no_generation(database, db, tiny, tiny_checkpoint):
    """Unloading model B: while its transaction is open, and while its tables are detached (waiting
    for a query that still reads the parent), model A answers; then B's tables are gone."""
    import threading

    from gptsql.loader.load import load, unload

    load(db, tiny_checkpoint, "lock-b")
    with database.connect() as removing:
        with removing.transaction():
            assert removing.execute("select gptsql.drop_model('lock-b')").fetchone()[0]
            answers_without_waiting(database, tiny)
    with database.connect() as reader, database.connect() as remover:
        with reader.transaction():           # a query on A in flight: the detach waits for it
            reader.execute("select * from gptsql.predict('Hi', 1, %s)", [tiny]).fetchall()
            done = threading.Event()
            worker = threading.Thread(target=lambda: (unload(remover, "lock-b"), done.set()))
            worker.start()
            assert wait_for(lambda: db.execute(
                "select count(*) from pg_stat_activity where query ilike '%%detach partition%%concurrently%%' "
                "and wait_event_type = 'Lock'").fetchone()[0] == 1, 30)
            answers_without_waiting(database, tiny)
            assert not done.is_set()
        worker.join(60)
    assert done.is_set()
    assert db.execute("select count(*) from pg_class where relname ~ '^(wte|linear)_[0-9]+$' and "
                      "relnamespace = 'gptsql'::regnamespace").fetchone()[0] == \
        2 * db.execute("select count(*) from gptsql.model").fetchone()[0]


# ------------------------------------------------------------- 3: the folders above the data directory
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_root_lets_only_the_server_user_pass_folders_above_the_data_dir():
    """A data directory under a 0700 folder of root's (as /root is on a fresh machine): the server's
    user alone is let through by an ACL entry (x only), said in one line, and the server starts;
    every other user is still kept out. A 0700 folder of another user's is refused in one line,
    naming it and the fix, and left as it was."""
    import subprocess
    import sys

    from gptsql.server import acl
    from gptsql.server.db import SERVER_USER_WHEN_ROOT

    base = Path(tempfile.mkdtemp(prefix="gqp-", dir="/tmp"))   # 0700
    data_dir = base / "inner" / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
    env["GPTSQL_DATA_DIR"] = str(data_dir)
    server = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
    try:
        result = subprocess.run([sys.executable, "-m", "gptsql", "db", "start"], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if str(base) in line]
        assert len(said) == 1 and f"{SERVER_USER_WHEN_ROOT}, so it may now pass {base} (an ACL entry" in said[0], said
        nobody = pwd.getpwnam("nobody")
        for folder in (base, data_dir):     # the folder above, and gptsql's own
            assert stat_mode(folder) & 0o007 == 0   # others: still nothing
            assert acl.user_can_pass(folder, server.pw_uid, server.pw_gid)
            assert not acl.user_can_pass(folder, nobody.pw_uid, nobody.pw_gid)
        kept_out = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"ls {base}/inner"], capture_output=True)
        assert kept_out.returncode != 0
    finally:
        subprocess.run([sys.executable, "-m", "gptsql", "db", "stop"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(base, ignore_errors=True)

    theirs = Path(tempfile.mkdtemp(prefix="gqp-", dir="/tmp"))
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)   # 0700, another user's
    env["GPTSQL_DATA_DIR"] = str(theirs / "data")
    try:
        result = subprocess.run([sys.executable, "-m", "gptsql", "db", "start"], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, lines
        assert f"cannot pass {theirs} (mode 0700)" in lines[0] and f"setfacl -m u:{SERVER_USER_WHEN_ROOT}:x {theirs}" \
            in lines[0], lines[0]
        assert stat_mode(theirs) == 0o700 and acl.entries(theirs) == [] and not (theirs / "data").exists()
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


def stat_mode(path: Path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def test_an_acl_entry_for_one_user_keeps_every_other_permission(tmp_path):
    """let_pass adds x for one user and changes nothing else: the owner's, the group's and others'
    permissions stay, a user already named keeps its entry, and a second call adds nothing."""
    from gptsql.server import acl

    folder = tmp_path / "f"
    folder.mkdir()
    folder.chmod(0o750)
    assert not acl.user_can_pass(folder, 4242, 4242)
    assert acl.let_pass(folder, 4242) and acl.let_pass(folder, 4343) and acl.let_pass(folder, 4242)
    entries = acl.entries(folder)
    assert (acl.USER_OBJ, 7, acl.NO_ID) in entries and (acl.GROUP_OBJ, 5, acl.NO_ID) in entries
    assert (acl.OTHER, 0, acl.NO_ID) in entries and (acl.MASK, 5, acl.NO_ID) in entries
    assert [e for e in entries if e[0] == acl.USER] == [(acl.USER, 1, 4242), (acl.USER, 1, 4343)]
    assert acl.user_can_pass(folder, 4242, 4242) and not acl.user_can_pass(folder, 4444, 4444)
    assert stat_mode(folder) == 0o750


# ------------------------------------------------------------- issue 28, 6: hostile checkpoint files


def refused(directory, *needles) -> str:
    """from_directory refuses the directory in one line holding every needle."""
    from gptsql.errors import UserError
    from gptsql.loader.sources import from_directory

    with pytest.raises(UserError) as caught:
        from_directory(directory)
    message = str(caught.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def edit_config(directory, change) -> None:
    import json

    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(change(config) or config))


@pytest.mark.parametrize("key, value, needle", [
    ("n_layer", 1e9, "n_layer must be a whole number from 1 to 256, not 1000000000.0"),
    ("n_layer", 10**9, "n_layer must be a whole number from 1 to 256, not 1000000000"),
    ("n_layer", 0, "n_layer must be a whole number from 1 to 256, not 0"),
    ("n_head", 0, "n_head must be a whole number from 1"),
    ("n_head", 3, "n_embd 64 is not a multiple of n_head 3"),
    ("n_embd", 100_000, "n_embd must be a whole number from 1 to 2,000"),
    ("vocab_size", "abc", "vocab_size must be a whole number from 1 to 1,048,576, not 'abc'"),
    ("vocab_size", None, "vocab_size must be a whole number"),
    ("vocab_size", True, "vocab_size must be a whole number"),
    ("n_positions", 0, "n_positions must be a whole number from 1 to 65,536, not 0"),
    ("layer_norm_epsilon", "x", "layer_norm_epsilon must be a number from 1e-12 to 1, not 'x'"),
    ("layer_norm_epsilon", float("nan"), "layer_norm_epsilon must be a number from 1e-12 to 1, not nan"),
    ("layer_norm_epsilon", -1e-5, "layer_norm_epsilon must be a number"),
    ("layer_norm_epsilon", 1e308, "layer_norm_epsilon must be a number"),
    ("layer_norm_epsilon", 0, "layer_norm_epsilon must be a number"),
])
def test_every_config_value_is_checked_for_its_type_and_range(good_checkpoint, tmp_path, key, value, needle):
    directory = broken_copy(good_checkpoint, tmp_path)
    edit_config(directory, lambda c: c.update({key: value}))
    refused(directory, f"{directory}: config.json", needle)


@pytest.mark.parametrize("config, needle", [([], "config.json is a JSON list, not an object"),
                                            (None, "config.json is a JSON NoneType, not an object"),
                                            ("gpt2", "config.json is a JSON str")])
def test_a_config_that_is_not_an_object(good_checkpoint, tmp_path, config, needle):
    import json

    directory = broken_copy(good_checkpoint, tmp_path)
    (directory / "config.json").write_text(json.dumps(config))
    refused(directory, needle)


@pytest.mark.parametrize("vocab, needle", [
    ({"a": 1_000_000_000}, "token 'a' has id 1000000000; ids are whole numbers from 0 to 0"),
    ([], "the vocabulary is a JSON list"),
    ({}, "the vocabulary is empty"),
    ({"a": "0", "b": "1"}, "token 'a' has id '0'"),
    ({"a": 0, "b": 0}, "1 ids are given to more than one token"),
])
def test_the_vocabulary_files_shape_is_checked(good_checkpoint, tmp_path, vocab, needle):
    import json

    directory = broken_copy(good_checkpoint, tmp_path)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    refused(directory, str(directory / "vocab.json"), needle)


@pytest.mark.parametrize("value, needle", [(1e30, "holds a value of 1e+30, past ±65504"),
                                           (float("nan"), "holds NaN or infinite values"),
                                           (float("inf"), "holds NaN or infinite values")])
def test_weights_that_cannot_run_are_refused(good_checkpoint, tmp_path, value, needle):

    directory = broken_copy(good_checkpoint, tmp_path)
    rewrite_tensors(directory, lambda t: t["transformer.h.1.mlp.c_fc.weight"].__setitem__((3, 5), value))
    refused(directory, "tensor h.1.mlp.c_fc.weight", needle, "cannot run")


def test_files_that_are_not_regular_files_are_refused_before_they_are_read(good_checkpoint, tmp_path):
    """A FIFO (it would wait for a writer forever), a link to a device or out of the directory, a
    file larger than its kind can be (a sparse file: nothing is written): each one line."""
    directory = broken_copy(good_checkpoint, tmp_path)
    config, weights = directory / "config.json", directory / "model.safetensors"
    kept = config.read_bytes()
    config.unlink()
    config.symlink_to("/dev/zero")
    refused(directory, f"{config}: a link to /dev/zero, outside {directory}")
    config.unlink()
    os.mkfifo(config)
    refused(directory, f"{config}: a FIFO (named pipe), not a regular file")
    config.unlink()
    with open(config, "wb") as f:
        f.truncate(2 << 20)
    refused(directory, f"{config}: 2.0 MB, more than such a file can be (1.0 MB)")
    config.write_bytes(kept)
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)
    refused(directory, f"{weights}: a link to {outside}, outside {directory}")
    weights.unlink()
    with open(weights, "wb") as f:
        f.truncate(100 << 30)
    refused(directory, f"{weights}: 102,400.0 MB, more than such a file can be")
    weights.unlink()
    os.mkfifo(weights)
    refused(directory, f"{weights}: a FIFO (named pipe)")


def test_a_fifo_checkpoint_is_one_line_from_the_cli(good_checkpoint, tmp_path, run_cli):
    """`gptsql load ./dir` with a FIFO as model.safetensors: one line, at once (it hung, and ignored
    SIGTERM)."""
    directory = broken_copy(good_checkpoint, tmp_path)
    (directory / "model.safetensors").unlink()
    os.mkfifo(directory / "model.safetensors")
    result = run_cli("load", str(directory), check=False, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "model.safetensors: a FIFO (named pipe), not a regular file" in result.stderr


# ------------------------------------------------------------- issue 28, 8: smaller cases of the same family
def postmaster_child(postmaster: int, name: bytes) -> int | None:
    """The pid of the postmaster's child process whose command line holds `name`, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == postmaster and name in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="stopping the server's recovery process takes root (its user's)")
def test_the_next_command_waits_for_a_server_recovering_after_a_crash(server):
    """A server process killed: PostgreSQL restarts the others and replays its log, refusing clients
    meanwhile ('the database system is in recovery mode'). Its recovery is held here (SIGSTOP on
    its startup process) until the next command says it waits, then let go: the command waits,
    saying so once, and succeeds (it failed at once)."""
    import psycopg

    postmaster = server.embedded.pid()
    for _attempt in range(5):     # the recovery may end before it is caught: crash again
        # up again first (the last attempt's crash, or an earlier test's): a connection made while
        # the postmaster resets its children is closed at once
        assert wait_for(lambda: probe_refusal(server) is None, 120), probe_refusal(server)
        victim = server.connect()
        os.kill(victim.info.backend_pid, signal.SIGKILL)
        startup = None
        assert wait_for(lambda: (startup := postmaster_child(postmaster, b"startup")) is not None
                        or "recovery" in str(probe_refusal(server)), 30)
        startup = postmaster_child(postmaster, b"startup")
        if startup is not None:
            os.kill(startup, signal.SIGSTOP)
            if probe_refusal(server) is not None:
                break
            os.kill(startup, signal.SIGCONT)
    else:
        pytest.skip("the recovery always ended before it could be held")
    try:
        models = Streamed(server, "models")
        assert wait_for(lambda: b"waiting" in models.err or models.proc.poll() is not None, 60), models.err
    finally:
        os.kill(startup, signal.SIGCONT)
    rc, out, err = models.finish(120)
    assert rc == 0, err
    assert err.startswith("waiting for the database server: it is starting up or recovering after a crash"), err
    assert len(err.strip().splitlines()) == 1 and "random-tiny" in out
    assert server.embedded.pid() == postmaster          # recovered, not restarted
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")


def probe_refusal(server):
    """The server's refusal of a new connection now, or None when it takes one."""
    import psycopg

    try:
        psycopg.connect(server.embedded.dsn(), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return exc
    return None


def test_dropping_more_than_a_few_runs_needs_yes(db, tiny, run_cli):
    """`runs drop --older-than 0m` dropped every finished run without a word: more than five
    asks at a terminal, and needs --yes elsewhere; nothing is dropped until then."""
    for _ in range(7):
        db.execute("select gptsql.generate('Hi', 1, model => %s)", [tiny])
    ids = [r for r, in db.execute("select id from gptsql.run order by id desc limit 7")]
    db.execute("update gptsql.run set started_at = started_at - interval '5000 days' where id = any(%s)", [ids])
    for args in (["--older-than", "4000d"], [str(i) for i in ids]):
        result = run_cli("runs", "drop", *args, check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "this drops 7 runs" in result.stderr and "add --yes" in result.stderr
        assert db.execute("select count(*) from gptsql.run where id = any(%s)", [ids]).fetchone()[0] == 7
    result = run_cli("runs", "drop", "--older-than", "4000d", "--yes")
    assert result.stdout.startswith("dropped 7 runs")
    assert db.execute("select count(*) from gptsql.run where id = any(%s)", [ids]).fetchone()[0] == 0


@pytest.mark.parametrize("value, needle", [("nan", "got NaN"), ("inf", "got Infinity"),
                                           ("1e-320", "temperature 1e-320 is too close to 0"),
                                           ("0.0001", "too close to 0: give 0 for greedy sampling, or at least 0.001")])
def test_temperatures_that_cannot_sample_are_one_line(tiny, run_cli, value, needle):
    """A temperature of 1e-320 divided the logits into an overflow ('value out of range: overflow')."""
    for command in (["generate", "-m", tiny, "-n", "1"], ["trace", "-m", tiny, "-n", "1"]):
        result = run_cli(*command, "-t", value, "Hi", check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert needle in result.stderr and "overflow" not in result.stderr


def test_a_statements_error_is_not_called_a_connection_failure(database, db, tiny, backend):
    """A lock timeout (a deadlock, a full disk: any error the server reports about a statement) is
    said as it is; "database connection failed" is for a connection that failed."""
    holder = database.connect(autocommit=False)
    try:
        holder.execute("lock gptsql.model in access exclusive mode")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPTSQL_")}
        env.update(backend[1], PGOPTIONS="-c lock_timeout=200ms")
        result = subprocess.run([sys.executable, "-m", "gptsql", "models"], capture_output=True, text=True, env=env,
                                timeout=120)
    finally:
        holder.close()
    assert result.returncode == 1 and result.stderr == "Error: canceling statement due to lock timeout\n", result.stderr


@pytest.mark.parametrize("name", ["a/b", "..", "tab\there", "back\\slash", "x" * 201])
def test_a_model_name_the_explorer_cannot_carry_is_refused(db, run_cli, name):
    result = run_cli("load", "random:tiny", "--name", name, "--replace", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "which the explorer's addresses cannot carry" in result.stderr
    assert db.execute("select count(*) from gptsql.model where name = %s", [name]).fetchone()[0] == 0


def test_two_connections_stepping_one_run_at_once(database, tiny):
    """The second is refused at once, in one line (it waited for the first, then failed on a
    duplicate key of the KV cache); the first's step is kept."""
    import threading

    import psycopg

    first, second = database.connect(autocommit=False), database.connect()
    try:
        run, tokens = first.execute("select run_id, tokens from gptsql.start_run(%s, 'Hello there')", [tiny]).fetchone()
        first.commit()
        first.execute("select * from gptsql.step(%s, %s, 0)", [run, tokens]).fetchall()   # its transaction open
        outcome = []
        racing = threading.Thread(target=lambda: outcome.append(try_step(second, run, tokens)))
        racing.start()
        assert wait_for(lambda: outcome or second_waits(database, first), 60)
        first.commit()
        racing.join(60)
        assert isinstance(outcome[0], psycopg.Error), outcome
        message = outcome[0].diag.message_primary
        assert message == f"run {run} is taking a step on another connection right now", message
        first.execute("select gptsql.finish_run(%s)", [run])
        first.commit()
        assert first.execute("select count(*) from gptsql.run_token where run_id = %s and not is_prompt",
                             [run]).fetchone()[0] == 1
    finally:
        first.close()
        second.close()


def try_step(conn, run, tokens):
    import psycopg

    try:
        return conn.execute("select * from gptsql.step(%s, %s, 0)", [run, tokens]).fetchall()
    except psycopg.Error as exc:
        return exc


def second_waits(database, first) -> bool:
    with database.connect() as watcher:
        return watcher.execute("select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                               [first.info.backend_pid]).fetchone()[0] > 0


def test_a_checkpoint_that_cannot_compute_a_token_is_not_loaded(good_checkpoint, tmp_path, db, run_cli):
    """Weights within their bound (±65504) can still drive the activations past the engine's
    numbers (a generation then failed with 'out of range for type halfvec'): the load computes one
    token before it commits, and refuses the model in one line; no model and no run are left."""
    import numpy as np

    def scale(tensors):
        for key, tensor in tensors.items():
            if not key.endswith(".bias"):
                tensors[key] = (tensor / np.abs(tensor).max() * 60000).astype(np.float32)

    directory = broken_copy(good_checkpoint, tmp_path)
    rewrite_tensors(directory, scale)
    runs = db.execute("select count(*) from gptsql.run").fetchone()[0]
    result = run_cli("load", str(directory), "--name", "overflowing", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert 'model "overflowing" cannot compute a token' in result.stderr and "nothing loaded" in result.stderr
    assert db.execute("select count(*) from gptsql.model where name = 'overflowing'").fetchone()[0] == 0
    assert db.execute("select count(*) from gptsql.run").fetchone()[0] == runs
