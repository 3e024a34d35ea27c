"""Adapter glue of ``llm_fill``: one column's fill (``dbt_pg_llm.pg.batch_fill``: the normal fill plus
provider batches) turned into dbt's words: its summary line, warnings per ``on_error`` and the spend
cap, DbtRuntimeError naming the column, the run's alerts, and the open batches' listing."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from dbt.adapters.events.logging import AdapterLogger
from dbt_common.exceptions import DbtRuntimeError

from dbt.adapters.pg_llm.engines import get_engine
from dbt.adapters.pg_llm.fill_messages import ProgressLogger, log_batches, warn_or_error

__all__ = ["fill_one", "list_batches", "raise_alerts", "report_budget"]

logger = AdapterLogger("pg_llm")


def fill_one(adapter, engine, run, source_sql: str, column: Dict[str, Any], mode: Any,
             node_id: Optional[str]) -> Dict[str, Any]:
    """Fill one column; log its summary and warnings; raise DbtRuntimeError per on_error='fail'."""
    from dbt_pg_llm.errors import PgLlmError, redact
    from dbt_pg_llm.pg.batch_fill import fill_column_batched

    settings = adapter.llm_settings()
    spec = adapter.column_spec(column["spec"], column.get("default_model"), column.get("name"))
    label = f"{node_id or 'model'}.{column.get('name')}"
    started = time.monotonic()
    try:
        batched = fill_column_batched(  # the normal fill, plus provider batches (issue 11)
            adapter.llm_credentials.connect_autocommit, engine, source_sql, spec,
            policy=_batch_policy(adapter, spec), say=lambda line: logger.info(f"{label}: {line}"),
            audit_schema=settings.audit_schema, run=run, on_error="fail" if mode == "fail" else "null",
            cache_ttl_days=settings.cache_ttl_days, max_cost_usd=settings.max_cost_usd_per_run,
            progress=ProgressLogger(label, settings.claim_timeout_s), claim_timeout_s=settings.claim_timeout_s,
            max_error_rate=settings.max_error_rate, store_prompts=settings.store_prompts,
        )
        report = batched.report
    except PgLlmError as exc:
        raise DbtRuntimeError(f"pg_llm: {label}: {redact(str(exc))}") from None
    except DbtRuntimeError:
        raise
    except Exception as exc:  # database errors & co: name them, never leak a key
        raise DbtRuntimeError(
            f"pg_llm: {label}: filling the column failed: {type(exc).__name__}: {redact(str(exc))}"
        ) from None
    elapsed = time.monotonic() - started
    logger.info(f"{label}: {redact(report.summary())} ({elapsed:.2f}s)")
    log_batches(label, batched, settings.audit_schema)
    if report.journal_error:
        warn_or_error(f"{label}: {redact(report.journal_error)}; the answers of this run were written "
                      f"straight to {settings.audit_schema}.llm_results instead")
    report_budget(settings, label, report)
    if report.errors:
        first = report.first_error
        first_text = redact(f"{first.kind}: {first.message}") if first else "see the dead letters"
        if mode == "fail":  # fill_column raises first; kept in case it returns
            raise DbtRuntimeError(
                f"pg_llm: {label}: {report.errors} key(s) failed (on_error='fail'); first error: {first_text}"
            )
        shown = "NULL" if mode == "null" else f"the on_error default {mode!r}"
        warn_or_error(
            f"{label}: {report.errors} of {report.distinct_keys} key(s) failed (llm.max_error_rate "
            f"{settings.max_error_rate:g} not exceeded); those rows get {shown}. The failures are "
            f"kept in {settings.audit_schema}.llm_errors and retried on the next run. "
            f"First error: {first_text}"
        )
    return report.as_progress()


def report_budget(settings, label: str, report) -> None:
    """Keys the spend cap stopped (a FillReport's ``budget_skipped``): a warning, or
    DbtRuntimeError naming the cap, the spent amount and the skipped keys with ``llm.on_budget: fail``."""
    if not report.budget_skipped:
        return
    from dbt_pg_llm.errors import redact

    budget = (f"{label}: llm.max_cost_usd_per_run reached: {redact(report.budget_text())}; those keys were "
              f"not requested (NULL now, dead letters of kind 'budget' in {settings.audit_schema}.llm_errors, "
              "requested on the next run)")
    if settings.on_budget == "fail":
        raise DbtRuntimeError(f"pg_llm: {budget} (llm.on_budget is 'fail')")
    warn_or_error(budget)


def _batch_policy(adapter, spec):
    """The column's batch policy: the model's ``batch:`` setting, switched by ``mode=``."""
    config = adapter.model_config_for(spec.model)
    policy = getattr(config, "batch", None)  # strategies have none
    return policy.for_column(spec.mode) if policy is not None else None


def list_batches(adapter, cancel: bool = False) -> List[Dict[str, Any]]:
    """Open provider batches of the audit schema (``pg_llm.batches``); with ``cancel``, ask the
    provider to cancel them first (``pg_llm.cancel_batches``). Returns one dict per batch."""
    from dbt_pg_llm.errors import PgLlmError, redact
    from dbt_pg_llm.pg.batch_collect import BatchCollector
    from dbt_pg_llm.pg.batch_store import open_batches

    settings, credentials = adapter.llm_settings(), adapter.llm_credentials
    run = adapter.run_context("operation")
    try:
        if cancel:
            with BatchCollector(credentials.connect_autocommit, get_engine(credentials),
                                settings.audit_schema, run) as collector:
                for line in collector.cancel():
                    logger.info(f"pg_llm: cancelled {line}")
        conn = credentials.connect_autocommit()
        try:
            rows = open_batches(conn, settings.audit_schema)
        finally:
            conn.close()
    except PgLlmError as exc:
        raise DbtRuntimeError(f"pg_llm: {redact(str(exc))}") from None
    return [{"batch": r.provider_batch_id or r.batch_uid, "provider": r.provider, "model": r.model,
             "status": r.status, "keys": r.key_count, "submitted_at": str(r.submitted_at),
             "node_id": r.node_id} for r in rows]


def raise_alerts(adapter, engine, run) -> None:
    """Write the engine's new alerts to llm_alerts (once per run, model and type) and log them."""
    from dbt_pg_llm.errors import redact
    from dbt_pg_llm.pg.upkeep import raise_alerts as write_alerts

    settings = adapter.llm_settings()
    try:
        conn = adapter.llm_credentials.connect_autocommit()
        try:
            alerts = write_alerts(conn, settings.audit_schema, engine, run.run_id, settings.alerts)
        finally:
            conn.close()
    except Exception as exc:  # alerting must never mask the fill's own outcome
        logger.warning(f"pg_llm: could not write alerts: {type(exc).__name__}: {redact(str(exc))}")
        return
    for alert in alerts:
        logger.warning(f"pg_llm alert: {redact(str(alert))}")
    if settings.alert_webhook is not None and alerts:
        # never raises: a webhook that fails is logged and the run goes on
        for problem in settings.alert_webhook.send(alerts, run_id=run.run_id, target=run.target):
            logger.warning(f"pg_llm: alert webhook: {redact(problem)}; the run goes on")
