"""The Postgres side: audit/cache schema, COPY writers, the column fill algorithm, DataFrame sessions.

Everything here talks to a DB-API (psycopg2) connection handed in by the caller and never imports dbt.

* ``migrations`` — ``migrate(conn, schema)``: versioned, idempotent, safe under concurrency.
* ``writers``    — COPY-based bulk writers for results, calls, errors, alerts, runs.
* ``enrich``     — ``ColumnSpec``, ``fill_column`` (pay once per distinct key), ``join_sql``.
* ``frame``      — ``LlmFrameSession``: the same fill over a pandas Series (Python models).
"""
from .migrations import migrate, validate_schema_name, quote_ident, apply_retention  # noqa: F401
