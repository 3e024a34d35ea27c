"""How to reach a server: `PgInfo` (DSN, psycopg2 kwargs, PG* environment) and the `ping` health check.

Separate from the server machinery because it also describes a user's own server (`PgInfo.from_env`)
and is all that most callers (fixtures, the demo, dbt profiles) need after `start()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_DBNAME = "dbt_pg_llm"
SUPERUSER = "postgres"


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


def ping(host: str, port: int, dbname: str = "postgres", timeout: int = 3) -> str | None:
    """None when `select 1` works (as the superuser), else the error message."""
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
