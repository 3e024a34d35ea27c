"""The audit/cache schema (default ``llm_audit``) and its versioned, idempotent migrations.

``migrate(conn, schema)`` applies the missing steps of ``MIGRATIONS`` in one transaction under
``pg_advisory_xact_lock``, so any number of runs (threads, processes, dbt invocations) may start at
once on a fresh database: one creates everything, the others wait and find nothing left to do.
Applied versions are recorded in ``<schema>.schema_migrations``. Steps are append-only: never edit
a released step, add a new version.

Tables (see the comment of each step in ``migration_steps.py``): ``llm_results`` (the shared cache), ``llm_claims``,
``llm_calls`` (partitioned by month, with a DEFAULT partition), ``llm_runs``, ``llm_errors``
(dead letters), ``llm_alerts``, ``llm_frame_prompts`` (staging for DataFrame sessions), ``llm_batches`` /
``llm_batch_keys`` (provider batches, version 10; provenance columns of ``llm_results``: version 11) and the views
``llm_metrics`` and ``llm_model_status``.
"""
from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from contextlib import contextmanager
from typing import Iterator

from ..errors import ConfigError
from .migration_steps import migration_steps

__all__ = [
    "MIGRATIONS",
    "db_identity",
    "migrate",
    "ensure_migrated",
    "forget_migrated",
    "validate_schema_name",
    "quote_ident",
    "qualified",
    "ensure_call_partitions",
    "apply_retention",
    "transaction",
    "LOCK_CLASS",
]

# First key of every advisory lock this package takes (the second is hashtext(schema)).
LOCK_CLASS = 0x6C6C6D  # "llm"
_LOCK_MIGRATE = f"pg_advisory_xact_lock({LOCK_CLASS}, hashtext(%s))"

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_PARTITION_RE = re.compile(r"^llm_calls_p(\d{4})(\d{2})$")


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a usable audit schema name, else raise ConfigError saying why."""
    if not isinstance(schema, str) or not schema:
        raise ConfigError([f"audit_schema: {schema!r} is not a schema name; use e.g. 'llm_audit'"])
    problems = []
    if not _SCHEMA_RE.match(schema):
        problems.append(f"audit_schema: {schema!r} is not a plain identifier; use lowercase letters, digits "
                        "and '_' starting with a letter or '_', e.g. 'llm_audit'")
    if len(schema.encode()) > 63:
        problems.append(f"audit_schema: {schema!r} is longer than Postgres' 63-byte identifier limit")
    if schema.lower().startswith("pg_"):
        problems.append(f"audit_schema: {schema!r} starts with 'pg_', which Postgres reserves for system "
                        "schemas; use e.g. 'llm_audit'")
    if problems:
        raise ConfigError(problems)
    return schema


def quote_ident(name: str) -> str:
    """Quote any identifier for Postgres ("a""b" style); refuses NUL, which Postgres cannot store."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"not a usable identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


@contextmanager
def transaction(conn) -> Iterator:
    """One transaction on ``conn`` that commits on success and rolls back on error, whether the
    connection is in autocommit mode (switched off for the block) or not (then it must have no
    transaction open: this commits)."""
    was_autocommit = conn.autocommit
    if was_autocommit:
        conn.autocommit = False
    try:
        with conn:  # psycopg2: commit on success, rollback on exception
            with conn.cursor() as cur:
                yield cur
    finally:
        if was_autocommit:
            try:
                conn.autocommit = True
            except Exception:  # connection broken: the caller will find out on next use
                pass


# The steps with a placeholder schema, for inspection; migrate() renders them for the real one.
MIGRATIONS: list[tuple[int, str]] = migration_steps("llm_audit", quote_ident("llm_audit"))


def migrate(conn, schema: str = "llm_audit") -> list[int]:
    """Bring ``schema`` up to the latest version; return the versions applied now (often none).

    Commits. Safe to call concurrently from many sessions (advisory transaction lock).
    """
    validate_schema_name(schema)
    q = quote_ident(schema)
    applied_now: list[int] = []
    with transaction(conn) as cur:
        cur.execute(f"select {_LOCK_MIGRATE}", (schema,))
        cur.execute(f"create schema if not exists {q}")
        cur.execute(f"""create table if not exists {q}.schema_migrations (
                            version    integer primary key,
                            applied_at timestamptz not null default now())""")
        cur.execute(f"select version from {q}.schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, sql in migration_steps(schema, q):
            if version in done:
                continue
            cur.execute(sql)
            cur.execute(f"insert into {q}.schema_migrations (version) values (%s)", (version,))
            applied_now.append(version)
    return applied_now


_migrated: set[tuple] = set()
_migrated_lock = threading.Lock()


def db_identity(conn, schema: str) -> tuple:
    """(host, port, database, schema) of ``conn``: what per-process memos of a schema are keyed by."""
    info = getattr(conn, "info", None)
    if info is not None:
        return (info.host, info.port, info.dbname, schema)
    return (getattr(conn, "dsn", id(conn)), schema)


def ensure_migrated(conn, schema: str = "llm_audit") -> None:
    """``migrate`` once per process per database and schema (the memo is cleared by forget_migrated)."""
    ident = db_identity(conn, schema)
    if ident in _migrated:
        return
    with _migrated_lock:
        if ident in _migrated:
            return
        migrate(conn, schema)
        _migrated.add(ident)


def forget_migrated() -> None:
    with _migrated_lock:
        _migrated.clear()


def ensure_call_partitions(cur, schema: str, timestamps) -> list[str]:
    """Create the monthly ``llm_calls`` partitions covering ``timestamps`` (datetimes) if missing."""
    months = sorted({(u.year, u.month) for u in (_utc(t) for t in timestamps if t is not None)})
    if not months:
        return []
    firsts = [f"{y:04d}-{m:02d}-15T00:00:00+00:00" for y, m in months]  # mid-month: no tz edge
    cur.execute(f"select {quote_ident(schema)}.llm_calls_ensure_partition(t) "
                "from unnest(%s::timestamptz[]) t", (firsts,))
    return [row[0] for row in cur.fetchall()]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def apply_retention(conn, schema: str, days: int | float) -> dict:
    """Keep ``days`` of ``llm_calls``: drop whole monthly partitions that end before the cutoff,
    then delete older rows from the partitions that remain (incl. the default). Commits.
    Returns ``{"cutoff", "dropped_partitions", "deleted_rows"}``."""
    validate_schema_name(schema)
    if not isinstance(days, (int, float)) or days < 0:
        raise ConfigError([f"retention days: {days!r} must be a number >= 0"])
    q = quote_ident(schema)
    dropped: list[str] = []
    with transaction(conn) as cur:
        cur.execute(f"lock table {q}.llm_calls in share update exclusive mode")  # vs. partition creators
        cur.execute("select now() - make_interval(secs => %s)", (float(days) * 86400.0,))
        cutoff = cur.fetchone()[0]
        cur.execute(
            """select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
               where i.inhparent = %s::regclass""",
            (f"{q}.llm_calls",),
        )
        for (name,) in cur.fetchall():
            m = _PARTITION_RE.match(name)
            if not m:
                continue
            year, month = int(m.group(1)), int(m.group(2))
            nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
            cur.execute("select make_timestamptz(%s, %s, 1, 0, 0, 0, 'UTC') <= %s", (nyear, nmonth, cutoff))
            if cur.fetchone()[0]:
                cur.execute(f"drop table {q}.{quote_ident(name)}")
                dropped.append(name)
        cur.execute(f"delete from {q}.llm_calls where ts < %s", (cutoff,))
        deleted = cur.rowcount
    return {"cutoff": cutoff, "dropped_partitions": sorted(dropped), "deleted_rows": deleted}
