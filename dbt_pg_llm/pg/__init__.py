"""The Postgres side: audit/cache schema, COPY writers, the column fill algorithm, the vectors' store.

Everything here talks to a DB-API (psycopg2) connection handed in by the caller and never imports dbt.

* ``migrations`` — ``migrate(conn, schema)``: versioned, idempotent, safe under concurrency;
  ``apply_retention(conn, schema, days)``.
* ``writers``    — COPY-based bulk writers for results, calls, errors, alerts; ``record_run``.
* ``spec``       — ``ColumnSpec`` (what an LLM column asks for), ``RunContext`` (where a fill comes from).
* ``join``       — ``join_sql`` (the model's SELECT over ``llm_results``), ``quote_literal``.
* ``fill``       — ``fill_column``: make ``llm_results`` hold every key the join needs, paying once per
  distinct key; with ``claims`` (no key paid twice by concurrent runs) and ``budget`` (``max_cost_usd``).
* ``report``     — ``FillReport`` / ``FillError``: what one fill did.
* ``vectors``    — ``llm_embeddings``: binary COPY of vectors, lookups (pgvector ``vector`` or ``real[]``).
* ``upkeep``     — ``raise_alerts``: the engine's alerts into ``llm_alerts``, once per run/model/type.
* ``usage_report`` — per-model usage over N days from the audit tables (``pg_llm.report``, the HTML report).
* ``cache_control`` — ``invalidate`` (``llm_results`` and the journal together), ``purge_audit``.
* ``estimate``   — ``estimate_column``: the uncached keys, tokens and cost of a fill, requesting nothing.
* ``progress``   — ``ProgressPacer`` (every 10 s or 10% of keys), ``AttemptCounter`` (retries / 429s).
"""
from .fill import fill_column
from .join import join_sql
from .migrations import apply_retention, ensure_migrated, migrate, quote_ident, validate_schema_name
from .report import FillError, FillReport
from .spec import ColumnSpec, RunContext
from .upkeep import raise_alerts
from .writers import (ErrorRow, ResultRow, record_run, resolve_errors, write_alerts, write_calls, write_errors,
                      write_results)

__all__ = [
    "ColumnSpec", "ErrorRow", "FillError", "FillReport", "ResultRow", "RunContext",
    "apply_retention", "ensure_migrated", "fill_column", "join_sql", "migrate", "quote_ident", "raise_alerts", "record_run",
    "resolve_errors", "validate_schema_name", "write_alerts", "write_calls", "write_errors", "write_results",
]
