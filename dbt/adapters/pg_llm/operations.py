"""The adapter side of the operator's commands: estimate (``llm_enrich`` in estimate mode),
``pg_llm.invalidate`` and ``pg_llm.purge_audit``. Each opens its own autocommit connection, so
what it changes is committed whatever dbt does with its own transaction (run-operation does not
commit a macro's statements by itself). The work is done by ``dbt_pg_llm.pg`` (no dbt there)."""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from dbt.adapters.events.logging import AdapterLogger
from dbt_common.exceptions import DbtRuntimeError

__all__ = ["estimate_columns", "log_estimate", "invalidate_cache", "purge_audit_rows"]

logger = AdapterLogger("pg_llm")

# Per invocation: the estimated cost so far of every model estimated (threads add up), so each
# estimate line can show the selection's running total against max_cost_usd_per_run.
_ESTIMATES: Dict[str, float] = {}
_ESTIMATES_LOCK = threading.Lock()


def _runtime_error(exc: Exception) -> DbtRuntimeError:
    from dbt_pg_llm.errors import redact

    return DbtRuntimeError(f"pg_llm: {redact(str(exc))}")


def estimate_columns(adapter, engine, source_sql: str, columns: List[Dict[str, Any]], node_id: Optional[str],
                     invocation_id: str) -> List[Dict[str, Any]]:
    """Log one estimate line per column and the invocation's running total; request nothing."""
    from dbt_pg_llm.errors import PgLlmError
    from dbt_pg_llm.pg.estimate import callable_members, estimate_column
    from dbt_pg_llm.pg.migrations import ensure_migrated

    settings = adapter.llm_settings()
    out = []
    conn = adapter.llm_credentials.connect_autocommit()
    try:
        ensure_migrated(conn, settings.audit_schema)
        for column in columns:
            spec = adapter.column_spec(column["spec"], column.get("default_model"), column.get("name"))
            label = f"{node_id or 'model'}.{column.get('name')}"
            strategy = settings.strategies.get(spec.model)  # priced by the members it may call
            members, any_one = callable_members(strategy, settings.models, spec.kind) if strategy else (None, False)
            try:
                est = estimate_column(conn, str(source_sql), spec, adapter.model_config_for(spec.model),
                                      column["fingerprint"], settings.audit_schema, node_id=node_id,
                                      in_journal=lambda key, not_before: engine.cache.get(key, not_before) is not None,
                                      members=members, any_one=any_one)
            except PgLlmError as exc:
                raise _runtime_error(exc) from None
            except Exception as exc:  # e.g. the source relation does not exist yet: say so, go on
                conn.rollback()
                logger.warning(f"pg_llm estimate: {label}: cannot estimate ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:300]}); build its upstream models first")
                continue
            out.append(log_estimate(settings, invocation_id, est))
    finally:
        conn.close()
    return out


def log_estimate(settings, invocation_id: str, est) -> Dict[str, Any]:
    """Add ``est`` (a ``ColumnEstimate``, chat or embeddings) to the invocation's running total, log
    its line against max_cost_usd_per_run, and return it as a dict with ``selection_total_usd``."""
    with _ESTIMATES_LOCK:
        total = _ESTIMATES[invocation_id] = _ESTIMATES.get(invocation_id, 0.0) + (est.cost_usd or 0.0)
    cap = settings.max_cost_usd_per_run
    against = (f"of llm.max_cost_usd_per_run ${cap:g}" + (" (EXCEEDED: the run would stop there)"
                                                         if total > cap else "")
               if cap else "(no llm.max_cost_usd_per_run set)")
    logger.info(f"pg_llm estimate: {est.line()}; selection total so far ${total:.4f} {against}")
    return {**est.as_dict(), "selection_total_usd": round(total, 6)}


def invalidate_cache(adapter, engine, args: Dict[str, Any]) -> Dict[str, Any]:
    """``pg_llm.invalidate``: mark matching llm_results rows invalid and the same journal keys."""
    from dbt_pg_llm.errors import PgLlmError
    from dbt_pg_llm.pg.cache_control import InvalidateFilter, invalidate, what_is_cached

    settings = adapter.llm_settings()
    hint = ""
    try:
        selected = InvalidateFilter.from_args(args)
        conn = adapter.llm_credentials.connect_autocommit()
        try:
            done = invalidate(conn, settings.audit_schema, engine.cache, selected)
            if not done["invalidated"]:  # a misspelt node / column: say what there is
                hint = f". Nothing matched {_args_text(args)}: {what_is_cached(conn, settings.audit_schema)}"
        finally:
            conn.close()
    except PgLlmError as exc:
        raise _runtime_error(exc) from None
    except Exception as exc:  # a bad `where` predicate, say
        raise DbtRuntimeError(f"pg_llm.invalidate: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    logger.info(f"pg_llm: invalidated {done['invalidated']} cached answer(s) in {settings.audit_schema}.llm_results "
                f"and {done['journal']} in the local journal ({settings.journal_path()}); the next run requests "
                f"them again{hint}")
    return done


def _args_text(args: Dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in args.items() if v is not None and v is not False) + "}"


def purge_audit_rows(adapter, older_than_days: Any) -> Dict[str, Any]:
    """``pg_llm.purge_audit``: delete old audit rows (never valid cached answers)."""
    from dbt_pg_llm.errors import PgLlmError
    from dbt_pg_llm.pg.cache_control import purge_audit

    settings = adapter.llm_settings()
    try:
        conn = adapter.llm_credentials.connect_autocommit()
        try:
            done = purge_audit(conn, settings.audit_schema, older_than_days)
        finally:
            conn.close()
    except PgLlmError as exc:
        raise _runtime_error(exc) from None
    counts = ", ".join(f"{n} {t}" for t, n in done["deleted"].items())
    logger.info(f"pg_llm: purged audit rows of {settings.audit_schema} older than {done['cutoff']}: {counts}")
    return {"cutoff": str(done["cutoff"]), "deleted": done["deleted"]}
