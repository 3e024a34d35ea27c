"""The `pg_llm` adapter: dbt-postgres plus a few @available methods that hand column specs to the engine.

Thin on purpose (the logic lives in ``dbt_pg_llm``):

* ``llm_column(spec, default_model)`` -> fingerprint, per-row key SQL and output column of one spec
  (settings only, no engine, no database: safe at parse and compile time);
* ``llm_fill(source_sql, columns, on_error, node_id)`` -> asks the engine for the missing keys, but only
  when the model really executes (``run`` / ``build`` / ``retry``), on its own autocommit connection;
* ``llm_join_sql(source_sql, columns, on_error)`` -> the SQL joining the relation to the results;
* ``submit_python_job`` -> runs Python models in-process (see ``python_model.py``).

Each operator's glue is a module of its own (``fill_op``, ``embed_columns``, ``aggregate_op``,
``top_k_op``, ``semantic_join_op``, ``evaluate_op``, ``operations``), handed the adapter, whose
public helpers (``llm_settings``, ``llm_credentials``, ``column_spec``, ``model_config_for``,
``run_context``, ``on_error_mode``) are what they use; the process-wide engines are in ``engines.py``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from dbt.adapters.base import available
from dbt.adapters.contracts.connection import AdapterResponse
from dbt.adapters.events.logging import AdapterLogger
from dbt.adapters.postgres import PostgresAdapter
from dbt_common.exceptions import CompilationError, DbtRuntimeError

from dbt.adapters.pg_llm import log_bridge
from dbt.adapters.pg_llm.connections import PgLlmConnectionManager, PgLlmCredentials
from dbt.adapters.pg_llm.engines import (PREVIEW_COMMANDS, dbt_command, engine_if_built, first_time, get_engine,
                                         invocation_id, really_executing)
from dbt.adapters.pg_llm.fill_messages import ProgressLogger, warn_or_error
from dbt.adapters.pg_llm.fill_op import fill_one, list_batches, raise_alerts
from dbt.adapters.pg_llm.retry_chain import retry_chain

logger = AdapterLogger("pg_llm")

ON_ERROR_MODES = ("null", "fail")


class PgLlmAdapter(PostgresAdapter):
    ConnectionManager = PgLlmConnectionManager
    connections: PgLlmConnectionManager

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        log_bridge.install(logger)  # the engine's own log lines go through dbt's logger, not raw to stderr
        # a `dbt retry` continues the spend of the invocations it retries (max_cost_usd_per_run); told
        # here, in the main thread, where dbt's click context still says "retry" (retry_chain.py)
        self._continues = retry_chain(self.config, invocation_id())

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

    def debug_query(self) -> None:
        """`dbt debug`: the database check (dbt-postgres' ``select 1``), then one free GET per LLM
        endpoint (reachable, key accepted, model known). A failure fails the connection test with
        the endpoint's problem; the key is never shown."""
        super().debug_query()
        from dbt_pg_llm.models.endpoints import check_endpoint

        failed = []
        for name, config in self.llm_settings().models.items():
            if not config.enabled:
                logger.info(f"pg_llm endpoint {name}: disabled (enabled: false), not checked")
                continue
            check = check_endpoint(name, config)
            (logger.warning if check.warning else logger.info)(f"pg_llm endpoint {check}")
            if not check.ok:
                failed.append(str(check))
        if failed:
            raise DbtRuntimeError("the database answered, but an LLM endpoint check failed: " + "; ".join(failed))

    def clear_transaction(self) -> None:
        """dbt-core calls this around on-run-* hooks; its RunTask.after_run reports a DbtRuntimeError
        raised here as "Exited because of keyboard interrupt" (dbt-core 1.11, task/run.py). When the
        database went away during the run, the models already failed with the real error: with
        nothing to clear, log the connection failure instead of turning it into a fake Ctrl-C.
        Hooks, if any, still fail on their own connection with their own error."""
        from dbt.adapters.exceptions.connection import FailedToConnectError

        try:
            super().clear_transaction()
        except FailedToConnectError as exc:
            logger.warning(f"pg_llm: the database is unreachable ({str(exc).strip()}); "
                           "the failed models above say what was kept")

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def llm_credentials(self) -> PgLlmCredentials:
        return self.config.credentials  # type: ignore[return-value]

    def llm_settings(self):
        return self.llm_credentials.llm_settings()

    def column_spec(self, spec: Dict[str, Any], default_model: Optional[str], name: Optional[str] = None):
        """The checked ColumnSpec. A bad spec is a CompilationError: raised while dbt renders the
        model (parse, compile, run), dbt names the model, so nothing is ever requested for it."""
        from dbt_pg_llm.errors import PgLlmError
        from dbt_pg_llm.pg.spec import ColumnSpec

        settings = self.llm_settings()
        data = dict(spec)
        if name and not data.get("name"):
            data["name"] = name
        try:
            return ColumnSpec.from_dict(data, default_model or settings.model_for_default,
                                        path=f"columns.{name}" if name else "column")
        except PgLlmError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None

    def model_config_for(self, name: str):
        """The config of a model or strategy name; an unknown name lists every defined one."""
        from dbt_pg_llm.errors import RegistryError

        try:
            return self.llm_settings().config_for(name)
        except RegistryError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None

    def run_context(self, node_id: Optional[str]):
        from dbt_pg_llm.pg.spec import RunContext

        return RunContext(run_id=invocation_id(), node_id=node_id or "", target=self.config.target_name,
                          continues=self._continues)

    def on_error_mode(self, *candidates) -> Any:
        for value in candidates:
            if value is not None:
                return value
        return self.llm_settings().on_error

    # -- Jinja API -------------------------------------------------------------------------------
    @available
    def llm_column(self, spec: Dict[str, Any], default_model: Optional[str] = None,
                   name: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, Any]:
        """Resolve one column spec: {"name", "spec", "model", "fingerprint", "key_sql", "output_col"}.

        Needs only the validated settings (no engine, no database), so parse/compile pay nothing.
        """
        if not isinstance(spec, dict):
            raise DbtRuntimeError(
                f"pg_llm: the spec of column '{name}' must be a mapping, e.g. pg_llm.classify(...); "
                f"got {type(spec).__name__}"
            )
        if mode is not None and "mode" not in spec:  # llm_enrich(mode=...) for columns without their own
            spec = {**spec, "mode": mode}
        column_spec = self.column_spec(spec, default_model, name)
        fp = column_spec.fingerprint(self.model_config_for(column_spec.model))
        return {
            "name": name or column_spec.name,
            "spec": dict(spec),
            "default_model": default_model,
            "model": column_spec.model,
            "fingerprint": fp,
            "key_sql": column_spec.key_sql(fp),
            "output_col": column_spec.output_column,
        }

    @available
    def llm_fill(self, source_sql: str, columns: List[Dict[str, Any]], on_error: Any = None,
                 node_id: Optional[str] = None, for_test: bool = False) -> List[Dict[str, Any]]:
        """Request the missing keys of every column (only when the model really executes).

        Runs on the adapter's own autocommit connections (paid answers survive a failing model).
        on_error 'fail' -> DbtRuntimeError naming the first error; otherwise a warning with the
        failed count (the rows get NULL or the literal default; the keys are retried next run).
        ``for_test``: the calls of a data test (pg_llm.llm_accuracy's judge), which `dbt test` runs
        too; compile / show still request nothing.
        """
        if not (really_executing() or (for_test and dbt_command() == "test")):
            return []
        engine = get_engine(self.llm_credentials)
        run = self.run_context(node_id)
        reports = []
        try:
            for column in columns:
                reports.append(fill_one(self, engine, run, str(source_sql), column, self.on_error_mode(on_error),
                                        node_id))
        finally:
            raise_alerts(self, engine, run)  # also (above all) when a fill failed
        return reports

    @available
    def llm_batches(self, cancel: bool = False) -> List[Dict[str, Any]]:
        """Open provider batches of the audit schema (``pg_llm.batches``); with ``cancel``, ask the
        provider to cancel them first (``pg_llm.cancel_batches``). Returns one dict per batch."""
        return list_batches(self, cancel)

    @available
    def llm_join_sql(self, source_sql: str, columns: List[Dict[str, Any]], on_error: Any = None,
                     keep_keys: bool = False) -> str:
        """SQL selecting every column of the source plus the LLM columns, joined on their keys
        (``keep_keys``: plus each column's key as ``<column>__llm_key``)."""
        from dbt_pg_llm.pg.join import join_sql

        settings = self.llm_settings()
        triples = []
        for column in columns:
            spec = self.column_spec(column["spec"], column.get("default_model"), column.get("name"))
            triples.append((column["name"], spec, column["fingerprint"]))
        mode = self.on_error_mode(on_error)
        default = None if mode in ON_ERROR_MODES else mode
        return join_sql(str(source_sql), triples, settings.audit_schema, default, keep_keys=bool(keep_keys))

    # -- embedding columns (pg_llm.embed; the work is in embed_columns.py and the engine) ----------
    @available
    def llm_embed_column(self, spec: Dict[str, Any], default_model: Optional[str] = None,
                         name: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, Any]:
        """Resolve a pg_llm.embed spec (settings only: safe at parse and compile time)."""
        from dbt.adapters.pg_llm.embed_columns import resolve_embed_column

        if mode is not None and "mode" not in spec:  # llm_enrich(mode=...), as for text columns
            spec = {**spec, "mode": mode}

        # no model on the column nor on llm_enrich: the profile's default model (an OpenAI-compatible
        # server may serve both); an Anthropic default gets the compile error naming the key
        return resolve_embed_column(dict(spec), self.model_config_for, default_model or self.llm_settings().model_for_default,
                                    name)

    @available
    def llm_embed_fill(self, source_sql: str, columns: List[Dict[str, Any]], on_error: Any = None,
                       node_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Embed the missing texts of each embed column (only when the model really executes)."""
        if not really_executing():
            return []
        from dbt.adapters.pg_llm.embed_columns import fill_embed_column

        settings, engine, run = self.llm_settings(), get_engine(self.llm_credentials), self.run_context(node_id)
        return [fill_embed_column(self.llm_credentials.connect_autocommit, engine, str(source_sql), column,
                                  audit_schema=settings.audit_schema, run=run,
                                  label=f"{node_id or 'model'}.{column.get('name')}", on_error=self.on_error_mode(on_error),
                                  max_cost_usd=settings.max_cost_usd_per_run, claim_timeout_s=settings.claim_timeout_s,
                                  say=logger.info, warn=warn_or_error) for column in columns]

    @available
    def llm_embed_estimate(self, source_sql: str, columns: List[Dict[str, Any]],
                           node_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Estimate mode for embed columns: log their missing texts, requests and cost; request nothing."""
        from dbt.adapters.pg_llm.embed_columns import estimate_embed_columns

        return estimate_embed_columns(self.llm_credentials.connect_autocommit, get_engine(self.llm_credentials),
                                      self.llm_settings(), str(source_sql), columns, node_id, invocation_id())

    @available
    def llm_embed_join_sql(self, inner_sql: str, columns: List[Dict[str, Any]], check_vector: bool = True) -> str:
        """``inner_sql`` plus the embed columns: vector(d) where the database has pgvector, else real[]."""
        from dbt.adapters.pg_llm.embed_columns import embed_join

        return embed_join(self.llm_credentials.connect_autocommit if check_vector else None, str(inner_sql),
                          columns, self.llm_settings().audit_schema)

    # -- pg_llm.llm_aggregate (the tree: aggregate_op.py and operators/aggregate.py) -----------------
    @available
    def llm_aggregate(self, args: Dict[str, Any], relation_sql: Optional[str] = None, on_error: Any = None,
                      node_id: Optional[str] = None, estimate: bool = False) -> Any:
        """Check the arguments (a compile error names each bad one); with the relation's SQL, walk the
        groups' trees (filling each level through llm_fill on a real run) and return the SELECT."""
        from dbt.adapters.pg_llm.aggregate_op import aggregate, check_arguments, step_spec
        from dbt_pg_llm.errors import PgLlmError

        try:
            check_arguments(args)
        except PgLlmError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None
        name = args.get("answer_column") or "answer"
        column = self.llm_column(step_spec(args), default_model=args.get("model"), name=name)
        if relation_sql is None:
            return column
        self.llm_prepare()
        label = f"{node_id or 'model'}.{name}"
        fill = ((lambda source_sql: self.llm_fill(source_sql, [column], on_error=on_error, node_id=node_id))
                if really_executing() else None)
        return aggregate(column, self.model_config_for(column["model"]), self.llm_credentials.connect_autocommit,
                         self.llm_settings().audit_schema, str(relation_sql), dict(args), self.quote, fill,
                         lambda line: logger.info(f"{label}: llm_aggregate: {line}"), estimate=bool(estimate),
                         price=lambda source_sql: self.llm_estimate(source_sql, [column], node_id=node_id))

    # -- pg_llm.top_k (the tournament: top_k_op.py and operators/top_k.py) -------------------------
    @available
    def llm_top_k(self, args: Dict[str, Any], relation_sql: Optional[str] = None, on_error: Any = None,
                  node_id: Optional[str] = None, estimate: bool = False, distance_sql: Optional[str] = None) -> Any:
        """Check the arguments (a compile error names each bad one); with the relation's SQL, play the
        partitions' tournaments (filling each level through llm_fill on a real run), return the SELECT."""
        from dbt.adapters.pg_llm.top_k_op import check_arguments, top_k, window_spec
        from dbt_pg_llm.errors import PgLlmError

        try:
            check_arguments(args)
        except PgLlmError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None
        column = self.llm_column(window_spec(args), default_model=args.get("model"), name="rank")
        if relation_sql is None:
            return column
        self.llm_prepare()
        label = f"{node_id or 'model'}.top_k"
        fill = ((lambda source_sql: self.llm_fill(source_sql, [column], on_error=on_error, node_id=node_id))
                if really_executing() else None)
        try:
            return top_k(column, self.llm_credentials.connect_autocommit, self.llm_settings().audit_schema,
                         str(relation_sql), dict(args), self.quote, fill, lambda line: logger.info(f"{label}: {line}"),
                         distance_sql=distance_sql, node_id=node_id, on_error=on_error, estimate=bool(estimate))
        except PgLlmError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None

    # -- pg_llm.semantic_join (the planner: semantic_join_op.py and operators/semantic_join.py) ----
    @available
    def llm_semantic_join_plan(self, args: Dict[str, Any], left_sql: Optional[str] = None,
                               right_sql: Optional[str] = None, blocked_sql: Optional[str] = None,
                               node_id: Optional[str] = None) -> Dict[str, Any]:
        """Check the arguments (a compile error names each bad one); with the inputs' SQL, count each
        plan's calls, log them and the plan chosen (read-only: requests nothing)."""
        from dbt.adapters.pg_llm.semantic_join_op import check_arguments, plan_join
        from dbt_pg_llm.errors import PgLlmError

        try:
            check_arguments(args)
            if left_sql is None:
                return {}
            q = self.quote
            choice = plan_join(self.llm_credentials.connect_autocommit,
                               self.model_config_for(args.get("model") or self.llm_settings().model_for_default),
                               str(left_sql), str(right_sql), q(args["left_text"]), q(args["right_text"]),
                               blocked_sql and str(blocked_sql), args.get("plan", "auto"),
                               int(args.get("max_labels", 100)), args["predicate"],
                               int(args.get("max_label_tokens", 4000)))
        except PgLlmError as exc:
            raise CompilationError(f"pg_llm: {exc}") from None
        logger.info(f"{node_id or 'model'}: {choice['line']}")
        return choice

    @available
    def llm_prepare(self) -> str:
        """Create/migrate the audit schema (no requests), so the join SQL of `compile` / `show` runs
        on a fresh database. Called by llm_enrich only when `execute` is true. On a real run, also
        applies ``audit_retention_days`` to llm_calls, once per invocation."""
        from dbt_pg_llm.pg.migrations import apply_retention, ensure_migrated

        settings = self.llm_settings()
        schema = settings.audit_schema
        conn = self.llm_credentials.connect_autocommit()
        try:
            ensure_migrated(conn, schema)
            if (settings.audit_retention_days and really_executing()
                    and first_time("retention", (invocation_id(), schema))):
                done = apply_retention(conn, schema, settings.audit_retention_days)
                if done["dropped_partitions"] or done["deleted_rows"]:
                    logger.info(f"pg_llm: retention ({settings.audit_retention_days} days) dropped "
                                f"{len(done['dropped_partitions'])} llm_calls partition(s) and deleted "
                                f"{done['deleted_rows']} older row(s)")
        finally:
            conn.close()
        return ""

    @available
    def llm_estimate(self, source_sql: str, columns: List[Dict[str, Any]], node_id: Optional[str] = None):
        """Estimate mode of llm_enrich: log the uncached keys, tokens and cost of each column (and the
        selection's running total against max_cost_usd_per_run); requests nothing."""
        from dbt.adapters.pg_llm.operations import estimate_columns

        return estimate_columns(self, get_engine(self.llm_credentials), source_sql, columns, node_id, invocation_id())

    @available
    def llm_invalidate(self, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """``pg_llm.invalidate``: mark matching cached answers invalid in llm_results AND the journal."""
        from dbt.adapters.pg_llm.operations import invalidate_cache

        return invalidate_cache(self, get_engine(self.llm_credentials), dict(args or {}))

    @available
    def llm_evaluate(self, node_id: str, column: str, meta: Dict[str, Any], relation_sql: str, golden_sql: str,
                     golden_name: str, key: str, golden_column: str, models: Optional[List[str]] = None) -> str:
        """``pg_llm.evaluate``: the column's models against a golden relation, into llm_evaluations."""
        from dbt.adapters.pg_llm.evaluate_op import evaluate_column

        return evaluate_column(self, get_engine(self.llm_credentials), node_id, column, dict(meta or {}), relation_sql,
                               golden_sql, golden_name, key, golden_column, models)

    @available
    def llm_purge_audit(self, older_than_days: Any = None) -> Dict[str, Any]:
        """``pg_llm.purge_audit``: delete audit rows older than ``older_than_days`` (never valid answers)."""
        from dbt.adapters.pg_llm.operations import purge_audit_rows

        return purge_audit_rows(self, older_than_days)

    @available
    def llm_note_unfilled(self) -> str:
        """Say once per invocation of `dbt show` / `dbt compile` that LLM columns of keys not cached
        yet stay empty (NULL): only run / build / retry request answers."""
        which = dbt_command()
        if which in PREVIEW_COMMANDS and first_time("unfilled note", invocation_id()):
            logger.info(f"pg_llm: `dbt {which}` requests no LLM answers: the LLM columns of rows whose "
                        "answers are not cached yet are empty (NULL). `dbt run` or `dbt build` fills them.")
        return ""

    @available
    def llm_audit_schema(self) -> str:
        return self.llm_settings().audit_schema

    @available
    def llm_fresh_sql(self, alias: str) -> str:
        """The predicate "``alias`` (an llm_results row) may be served", for the generic tests."""
        from dbt_pg_llm.pg.join import fresh_sql

        return fresh_sql(str(alias))

    @available
    def llm_metrics_report(self) -> str:
        """The engine's in-process metrics (empty if no request was made in this process)."""
        engine = engine_if_built(self.llm_settings())
        return engine.metrics.report() if engine is not None else ""

    @available
    def llm_usage_report(self, days: Any = 7) -> str:
        """The text of ``pg_llm.report``: per model usage over the last ``days`` days, after settling
        dead runs (their unlogged requests from the call spool, their llm_runs counters)."""
        from dbt_pg_llm.pg.run_totals import spool_dir_for
        from dbt_pg_llm.pg.usage_report import audit_schema_exists, format_usage, settle_for_report, usage_by_model

        schema = self.llm_settings().audit_schema
        conn = self.llm_credentials.connect_autocommit()
        try:
            if not audit_schema_exists(conn, schema):
                return (f"pg_llm usage report: the audit schema {schema} does not exist yet; "
                        "it is created by the first run of an LLM model")
            settle_for_report(conn, schema, spool_dir_for(self.llm_settings().journal_path()))
            return format_usage(usage_by_model(conn, schema, days), days, schema)
        except ValueError as exc:
            raise DbtRuntimeError(f"pg_llm.report: {exc}") from None
        finally:
            conn.close()

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
        from dbt_pg_llm.operators.frame import LlmFrameSession

        settings = self.llm_settings()
        mode = self.on_error_mode(None)
        return LlmFrameSession(
            self.llm_credentials.connect_autocommit, get_engine(self.llm_credentials), settings.audit_schema,
            self.run_context(node_id), settings.model_for_default,
            on_error="fail" if mode == "fail" else "null",
            cache_ttl_days=settings.cache_ttl_days, max_cost_usd=settings.max_cost_usd_per_run,
            progress=ProgressLogger(f"{node_id or 'python model'}", settings.claim_timeout_s),
            claim_timeout_s=settings.claim_timeout_s, max_error_rate=settings.max_error_rate,
            store_prompts=settings.store_prompts,
        )
