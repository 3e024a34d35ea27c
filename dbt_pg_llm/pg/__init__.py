"""The Postgres side: audit/cache schema, COPY writers, the column fill algorithm, DataFrame sessions.

Everything here talks to a DB-API (psycopg2) connection handed in by the caller and never imports dbt.

* ``migrations`` — ``migrate(conn, schema)``: versioned, idempotent, safe under concurrency;
  ``apply_retention(conn, schema, days)``.
* ``writers``    — COPY-based bulk writers for results, calls, errors, alerts; ``record_run``.
* ``enrich``     — ``ColumnSpec``, ``RunContext``, ``fill_column`` (pay once per distinct key),
  ``join_sql`` (the model's SELECT), ``FillReport``.
* ``frame``      — ``LlmFrameSession``: the same fill over a pandas Series (Python models).
"""
from .enrich import ColumnSpec, FillError, FillReport, RunContext, fill_column, join_sql
from .frame import LlmFrameSession
from .migrations import apply_retention, ensure_migrated, migrate, quote_ident, validate_schema_name
from .writers import (ErrorRow, ResultRow, record_run, resolve_errors, write_alerts, write_calls, write_errors,
                      write_results)

__all__ = [
    "ColumnSpec", "ErrorRow", "FillError", "FillReport", "LlmFrameSession", "ResultRow", "RunContext",
    "apply_retention", "ensure_migrated", "fill_column", "join_sql", "migrate", "quote_ident", "record_run",
    "resolve_errors", "validate_schema_name", "write_alerts", "write_calls", "write_errors", "write_results",
]
