"""The `pg_llm` adapter: dbt-postgres plus a few @available methods that hand column specs to the engine.

Thin on purpose (the logic lives in ``dbt_pg_llm``):

* ``llm_column(spec, default_model)`` -> fingerprint, per-row key SQL and output column of one spec
  (settings only, no engine, no database: safe at parse and compile time);
* ``llm_fill(source_sql, columns, on_error, node_id)`` -> asks the engine for the missing keys, but only
  when the model really executes (``run`` / ``build`` / ``retry``), on its own autocommit connection;
* ``llm_join_sql(source_sql, columns, on_error)`` -> the SQL joining the relation to the results;
* ``submit_python_job`` -> runs Python models in-process (see ``python_model.py``).
"""
from __future__ import annotations

import atexit
import threading
import time
from typing import Any, Dict, List, Optional

from dbt.adapters.base import available
from dbt.adapters.contracts.connection import AdapterResponse
from dbt.adapters.events.logging import AdapterLogger
from dbt.adapters.postgres import PostgresAdapter
from dbt_common.exceptions import DbtRuntimeError

from dbt.adapters.pg_llm.connections import PgLlmConnectionManager, PgLlmCredentials

logger = AdapterLogger("pg_llm")

# Commands that really execute models. compile / show / docs generate also render models with
# execute=True, so `execute` alone is not enough to decide to pay for requests.
EXECUTING_COMMANDS = frozenset({"run", "build", "retry"})
ON_ERROR_MODES = ("null", "fail")

# One Engine per process and per llm block, shared by every dbt thread and by successive in-process
# invocations (dbtRunner): its journal, HTTP pools and event loop outlive an adapter instance.
_ENGINES: Dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()
# Money spent per invocation (for llm.max_cost_usd_per_run across models and columns).
_SPENT: Dict[str, float] = {}
_SPENT_LOCK = threading.Lock()


def _settings_key(settings) -> str:
    """Identity of an llm block, API keys included (a new key must not reuse an engine holding the old)."""
    import hashlib
    import json

    data = {name: getattr(settings, name) for name in settings.FIELDS if name != "models"}
    data["models"] = {n: c.to_dict(include_secret=True) for n, c in settings.models.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def get_engine(credentials: PgLlmCredentials):
    """The process-wide Engine for these credentials' llm block (built on first use, thread-safe)."""
    settings = credentials.llm_settings()
    key = _settings_key(settings)
    engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            from dbt_pg_llm.settings import build_engine

            engine = build_engine(settings)
            _ENGINES[key] = engine
    return engine


def close_engines() -> None:
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        try:
            engine.close()
        except Exception:  # closing at exit must never mask the real outcome
            pass


atexit.register(close_engines)


def really_executing() -> bool:
    """True when dbt is running models for real (run / build / retry), not compiling or showing them."""
    try:
        from dbt.flags import get_flags  # dbt-core; an adapter normally avoids it, but it is the truth

        which = getattr(get_flags(), "WHICH", None)
    except Exception:
        return False
    return which in EXECUTING_COMMANDS


def _invocation_id() -> str:
    try:
        from dbt_common.invocation import get_invocation_id

        return get_invocation_id()
    except Exception:
        return "unknown"


class PgLlmAdapter(PostgresAdapter):
    ConnectionManager = PgLlmConnectionManager
    connections: PgLlmConnectionManager

    @classmethod
    def get_adapter_run_info(cls, config):
        # The base class derives the module from the class name ("PgLlmAdapter" -> "pgllm").
        from importlib import import_module

        from dbt.adapters.base.relation import AdapterTrackingRelationInfo
        from dbt.adapters.pg_llm.__version__ import version

        return AdapterTrackingRelationInfo(
            adapter_name="pg_llm",
            base_adapter_version=import_module("dbt.adapters.__about__").version,
            adapter_version=version,
            model_adapter_details=cls._get_adapter_specific_run_info(config),
        )

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def _credentials(self) -> PgLlmCredentials:
        return self.config.credentials  # type: ignore[return-value]

    def _settings(self):
        return self._credentials.llm_settings()

    def _spec(self, spec: Dict[str, Any], default_model: Optional[str]):
        from dbt_pg_llm.errors import PgLlmError
        from dbt_pg_llm.pg.enrich import ColumnSpec

        settings = self._settings()
        try:
            return ColumnSpec.from_dict(dict(spec), default_model or settings.model_for_default)
        except PgLlmError as exc:
            raise DbtRuntimeError(f"pg_llm: invalid column spec: {exc}") from None

    def _model_config(self, name: str):
        settings = self._settings()
        models = settings.models
        if name not in models:
            known = ", ".join(sorted(models)) or "(none)"
            raise DbtRuntimeError(
                f"pg_llm: unknown model '{name}'; models configured under llm.models: {known}"
            )
        return models[name]

    def _run_context(self, node_id: Optional[str]):
        from dbt_pg_llm.pg.enrich import RunContext

        return RunContext(run_id=_invocation_id(), node_id=node_id or "", target=self.config.target_name)

    def _on_error(self, *candidates) -> Any:
        for value in candidates:
            if value is not None:
                return value
        return self._settings().on_error

    # -- Jinja API -------------------------------------------------------------------------------
    @available
    def llm_column(self, spec: Dict[str, Any], default_model: Optional[str] = None,
                   name: Optional[str] = None) -> Dict[str, Any]:
        """Resolve one column spec: {"name", "spec", "model", "fingerprint", "key_sql", "output_col"}.

        Needs only the validated settings (no engine, no database), so parse/compile pay nothing.
        """
        if not isinstance(spec, dict):
            raise DbtRuntimeError(
                f"pg_llm: the spec of column '{name}' must be a mapping, e.g. pg_llm.classify(...); "
                f"got {type(spec).__name__}"
            )
        column_spec = self._spec(dict(spec, name=name) if name and "name" not in spec else spec, default_model)
        model_config = self._model_config(column_spec.model)
        fp = column_spec.fingerprint(model_config)
        return {
            "name": name or getattr(column_spec, "name", None),
            "spec": dict(spec),
            "default_model": default_model,
            "model": column_spec.model,
            "fingerprint": fp,
            "key_sql": column_spec.key_sql(fp),
            "output_col": "output_json" if _is_json(column_spec, spec) else "output_text",
        }

    @available
    def llm_fill(self, source_sql: str, columns: List[Dict[str, Any]], on_error: Any = None,
                 node_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Request the missing keys of every column (only when the model really executes)."""
        if not really_executing():
            return []
        from dbt_pg_llm.errors import PgLlmError, redact
        from dbt_pg_llm.pg.enrich import fill_column

        settings = self._settings()
        engine = get_engine(self._credentials)
        run = self._run_context(node_id)
        reports = []
        for column in columns:
            spec = self._spec(_spec_with_name(column), column.get("default_model"))
            mode = self._on_error(column["spec"].get("on_error"), on_error)
            label = f"{node_id or 'model'}.{column.get('name')}"
            budget = self._remaining_budget(settings, run.run_id)
            started = time.monotonic()
            progress = _ProgressLogger(label)
            try:
                report = fill_column(
                    self._credentials.connect_autocommit, engine, str(source_sql), spec,
                    audit_schema=settings.audit_schema, run=run, on_error=mode,
                    cache_ttl_days=settings.cache_ttl_days, max_cost_usd=budget, progress=progress,
                )
            except PgLlmError as exc:
                raise DbtRuntimeError(f"pg_llm: filling {label} failed: {redact(str(exc))}") from None
            elapsed = time.monotonic() - started
            self._spend(run.run_id, float(getattr(report, "cost_usd", 0.0) or 0.0))
            summary = _report_dict(report)
            logger.info(f"pg_llm: {label}: {_describe(summary)} in {elapsed:.2f}s")
            failed = int(summary.get("failed", 0) or 0)
            if failed:
                first = redact(str(summary.get("first_error") or "see the dead-letter rows"))
                if mode == "fail":
                    raise DbtRuntimeError(
                        f"pg_llm: {failed} value(s) of {label} failed (on_error='fail'); first error: {first}"
                    )
                logger.warning(
                    f"pg_llm: {failed} value(s) of {label} failed and are "
                    f"{'NULL' if mode == 'null' else 'set to the on_error default'}; they are kept in "
                    f"{settings.audit_schema}.llm_dead_letters and retried on the next run. First error: {first}"
                )
            reports.append(summary)
        return reports

    @available
    def llm_join_sql(self, source_sql: str, columns: List[Dict[str, Any]], on_error: Any = None) -> str:
        """SQL selecting every column of the source plus the LLM columns, joined on their keys."""
        from dbt_pg_llm.pg.enrich import join_sql

        settings = self._settings()
        pairs = []
        for column in columns:
            spec = self._spec(_spec_with_name(column), column.get("default_model"))
            pairs.append((spec, column["fingerprint"]))
        return join_sql(str(source_sql), pairs, settings.audit_schema, self._on_error(on_error))

    @available
    def llm_audit_schema(self) -> str:
        return self._settings().audit_schema

    @available
    def llm_metrics_report(self) -> str:
        """The engine's in-process metrics (empty if no request was made in this process)."""
        settings = self._settings()
        engine = _ENGINES.get(_settings_key(settings))
        return engine.metrics.report() if engine is not None else ""

    # -- budget ----------------------------------------------------------------------------------
    @staticmethod
    def _remaining_budget(settings, run_id: str) -> Optional[float]:
        limit = getattr(settings, "max_cost_usd_per_run", None)
        if limit is None:
            return None
        with _SPENT_LOCK:
            return max(0.0, float(limit) - _SPENT.get(run_id, 0.0))

    @staticmethod
    def _spend(run_id: str, amount: float) -> None:
        with _SPENT_LOCK:
            _SPENT[run_id] = _SPENT.get(run_id, 0.0) + amount

    # -- Python models ---------------------------------------------------------------------------
    def submit_python_job(self, parsed_model: dict, compiled_code: str) -> AdapterResponse:
        from dbt.adapters.pg_llm.python_model import run_python_model

        connection = self.connections.get_thread_connection()
        if not connection.transaction_open:
            self.connections.begin()
        rows = run_python_model(self, connection.handle, parsed_model, compiled_code)
        return AdapterResponse(_message=f"OK {rows}", code="OK", rows_affected=rows)

    def python_session(self, handle, parsed_model: dict):
        """The `session` a Python model receives: .sql(query) -> DataFrame, .llm -> LlmFrameSession."""
        from dbt.adapters.pg_llm.python_model import Session

        return Session(self, handle, parsed_model)

    def llm_frame_session(self, node_id: Optional[str]):
        from dbt_pg_llm.pg.frame import LlmFrameSession

        settings = self._settings()
        return LlmFrameSession(
            self._credentials.connect_autocommit, get_engine(self._credentials), settings.audit_schema,
            self._run_context(node_id), settings.model_for_default,
        )


def _is_json(column_spec, spec: Dict[str, Any]) -> bool:
    kind = getattr(column_spec, "kind", None) or spec.get("kind") or spec.get("type")
    return kind in ("extract", "json")


def _spec_with_name(column: Dict[str, Any]) -> Dict[str, Any]:
    spec = dict(column["spec"])
    if column.get("name") and "name" not in spec:
        spec["name"] = column["name"]
    return spec


def _report_dict(report) -> Dict[str, Any]:
    if isinstance(report, dict):
        return dict(report)
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if hasattr(report, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(report)
    return dict(vars(report))


def _describe(summary: Dict[str, Any]) -> str:
    parts = []
    for name in ("keys", "requested", "cached", "failed", "claimed_elsewhere"):
        if name in summary:
            parts.append(f"{summary[name]} {name.replace('_', ' ')}")
    if summary.get("cost_usd"):
        parts.append(f"${float(summary['cost_usd']):.4f}")
    return ", ".join(parts) or "done"


class _ProgressLogger:
    """Progress callback for fill_column: one dbt log line at most every 2 seconds."""

    def __init__(self, label: str, every_s: float = 2.0):
        self.label = label
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, *args, **kwargs) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        if len(args) == 1 and not kwargs and isinstance(args[0], str):
            text = args[0]
        elif len(args) >= 2 and not kwargs:
            text = f"{args[0]}/{args[1]} keys"
        else:
            items = [str(a) for a in args] + [f"{k}={v}" for k, v in kwargs.items()]
            text = " ".join(items)
        logger.info(f"pg_llm: {self.label}: {text}")
