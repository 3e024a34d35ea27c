"""Fill a column with LLM output, paying once per distinct key: the algorithm behind ``llm_enrich``.

The model's SQL is a plain join of its source to ``<audit>.llm_results`` on the per-row key
(``join_sql``). Before that SQL runs, ``fill_column`` makes sure every key the join needs is in
``llm_results``:

1. migrate the audit schema (once per process, database and schema);
2. one statement counts rows and distinct keys, and logs the keys already cached as
   ``llm_calls`` rows with ``cached = true`` and ``saved_cost_usd`` = the stored cost;
3. a server-side cursor streams the distinct ``(key, prompt)`` pairs not in ``llm_results``
   (valid and unexpired); each batch is *claimed* in ``llm_claims`` (``ON CONFLICT DO NOTHING``)
   so concurrent runs never pay twice for a key; keys claimed by someone else are set aside;
4. claimed keys stream through ``engine.map_unordered`` (bounded in flight); answers are written
   with COPY in chunks as they arrive, on our own autocommit connection, so everything paid
   before a later failure is kept (and the engine journals every paid answer before returning);
   failures become dead letters in ``llm_errors``; successes resolve old dead letters;
5. keys set aside are waited for (polling ``llm_results``) and taken over if their claimer died
   (its session is gone, or its claims went stale); the engine's call logs go to ``llm_calls``;
   the invocation's counts are added to ``llm_runs``.

``on_error``: "fail" stops submitting at the first failed key, writes what was paid and raises
ModelError; anything else ("null", "default") dead-letters failures and carries on (the join
then gives NULL, or the column's default).

User SQL (the source SQL and the prompt SQL) may contain ``%`` (``LIKE '%x%'``, modulo), which
psycopg2 reads as a placeholder whenever parameters are passed. Rule: a statement that embeds
user SQL is executed WITHOUT parameters; its few values are inlined with ``quote_literal``.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..config import check_keys
from ..errors import ConfigError, ErrorKind, ModelError, PgLlmError, redact
from ..keys import canonical_json, fingerprint_of, key_sql
from ..model_io import ModelInput, ResponseFormat
from .migrations import _db_identity, ensure_call_partitions, ensure_migrated, quote_ident
from .writers import ErrorRow, ResultRow, record_run, resolve_errors, write_calls, write_errors, write_results

__all__ = [
    "ColumnSpec",
    "RunContext",
    "FillReport",
    "FillError",
    "fill_column",
    "join_sql",
    "quote_literal",
    "CLASSIFY_PHRASE",
    "EXTRACT_PHRASE",
]

log = logging.getLogger("dbt_pg_llm")

KINDS = ("complete", "classify", "extract")
SPEC_KEYS = ("kind", "prompt_sql", "system", "model", "max_tokens", "temperature", "labels", "instructions",
             "schema", "name")
# The simulator (and good practice) recognise exactly these phrases.
CLASSIFY_PHRASE = "Answer with exactly one of these labels and nothing else: "
EXTRACT_PHRASE = "Reply with JSON only, matching this JSON schema: "

PROGRESS_EVERY_S = 2.0
HEARTBEAT_EVERY_S = 30.0


# -- column specs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    """What one LLM column asks for. Build it with ``from_dict`` (which validates)."""

    kind: str
    prompt_sql: str
    model: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    labels: tuple[str, ...] = ()
    instructions: str | None = None
    schema: Any = None  # JSON schema (extract); a dict, kept as given
    name: str | None = None  # the output column, when the caller puts it in the spec

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "ColumnSpec", default_model: str | None = None,
                  path: str = "column") -> "ColumnSpec":
        """Validate a spec as the dbt macros pass it; ConfigError lists every problem with its fix."""
        if isinstance(data, ColumnSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError([f"{path}: expected a mapping like {{'kind': 'complete', 'prompt_sql': ...}}, "
                               f"got {type(data).__name__}"], context="LLM column spec")
        try:
            check_keys(dict(data), SPEC_KEYS, path)
        except ConfigError as exc:
            raise ConfigError(exc.problems, context="LLM column spec") from None
        problems: list[str] = []
        kind = data.get("kind")
        if kind not in KINDS:
            problems.append(f"{path}.kind: {kind!r} is not a column kind; use one of {', '.join(KINDS)}")
        prompt_sql = data.get("prompt_sql")
        if not isinstance(prompt_sql, str) or not prompt_sql.strip():
            problems.append(f"{path}.prompt_sql: missing; give the SQL expression of the prompt, "
                            "e.g. 'Summarize: ' || body")
        model = data.get("model") or default_model
        if not isinstance(model, str) or not model:
            problems.append(f"{path}.model: missing and no default model is configured; set model: <name> "
                            "on the column or a default model in the profile's llm block")
        system = data.get("system")
        instructions = data.get("instructions")
        labels = data.get("labels")
        schema = data.get("schema")
        for key, value in (("system", system), ("instructions", instructions)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{path}.{key}: expected text, got {type(value).__name__}")
        max_tokens = data.get("max_tokens")
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, float)) or max_tokens <= 0 \
                    or int(max_tokens) != max_tokens:
                problems.append(f"{path}.max_tokens: {max_tokens!r} must be a positive whole number, e.g. 256")
            else:
                max_tokens = int(max_tokens)
        temperature = data.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                    or not 0 <= temperature <= 2:
                problems.append(f"{path}.temperature: {temperature!r} must be a number from 0 to 2")
            else:
                temperature = float(temperature)
        label_tuple: tuple[str, ...] = ()
        if kind == "classify":
            if not labels or isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
                problems.append(f"{path}.labels: classify needs a list of labels, e.g. labels: [positive, "
                                "negative, neutral]")
            else:
                label_tuple = tuple(str(x) for x in labels)
                if any(not x.strip() for x in label_tuple):
                    problems.append(f"{path}.labels: labels must be non-empty text")
                if len(set(label_tuple)) != len(label_tuple):
                    problems.append(f"{path}.labels: labels must be distinct; remove the duplicates")
        elif labels:
            problems.append(f"{path}.labels: only used by kind 'classify'; remove it or change kind")
        if kind == "extract":
            if not isinstance(schema, Mapping) or not schema:
                problems.append(f"{path}.schema: extract needs a JSON schema (a mapping), e.g. "
                                "{type: object, properties: {city: {type: string}}}")
        elif schema is not None:
            problems.append(f"{path}.schema: only used by kind 'extract'; remove it or change kind")
        if kind in ("classify", "extract") and system is not None:
            problems.append(f"{path}.system: not used by kind '{kind}'; put extra guidance in 'instructions'")
        if kind == "complete" and instructions is not None:
            problems.append(f"{path}.instructions: not used by kind 'complete'; use 'system' for the system prompt")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"{path}.name: expected the output column's name as text")
        if problems:
            raise ConfigError(problems, context="LLM column spec")
        return cls(kind=kind, prompt_sql=prompt_sql, model=model, system=system, max_tokens=max_tokens,
                   temperature=temperature, labels=label_tuple, instructions=instructions,
                   schema=json.loads(json.dumps(schema)) if kind == "extract" else None, name=name)

    @property
    def system_message(self) -> str | None:
        prefix = (self.instructions + "\n\n") if self.instructions else ""
        if self.kind == "classify":
            return prefix + CLASSIFY_PHRASE + " | ".join(self.labels)
        if self.kind == "extract":
            return prefix + EXTRACT_PHRASE + canonical_json(self.schema)
        return self.system

    @property
    def response_format(self) -> ResponseFormat:
        if self.kind == "classify":
            return ResponseFormat.one_of(self.labels)
        if self.kind == "extract":
            return ResponseFormat.json(self.schema)
        return ResponseFormat.text()

    def model_input(self, prompt: str) -> ModelInput:
        return ModelInput(prompt=prompt, system_message=self.system_message, temperature=self.temperature,
                          max_tokens=self.max_tokens, response_format=self.response_format)

    def fingerprint(self, model_config) -> str:
        return fingerprint_of(model_config, self.model_input(""))

    def key_sql(self, fingerprint: str, prompt_sql: str | None = None) -> str:
        """SQL of the per-row key (NULL for a NULL prompt) over the source's columns."""
        return key_sql(fingerprint, self.prompt_sql if prompt_sql is None else prompt_sql)

    @property
    def output_column(self) -> str:
        """The llm_results column holding this kind's answer."""
        return "output_json" if self.kind == "extract" else "output_text"


@dataclass(frozen=True)
class RunContext:
    """Where a fill comes from: ``run_id`` (dbt's invocation_id), ``node_id``, ``target``."""

    run_id: str
    node_id: str | None = None
    target: str | None = None

    def as_context(self, **extra) -> dict:
        out = {"run_id": self.run_id, "node_id": self.node_id}
        out.update(extra)
        return out


@dataclass(frozen=True)
class FillError:
    key: str
    kind: str
    message: str


@dataclass
class FillReport:
    """What one fill did. ``cache_hits`` counts distinct keys answered without paying now (cached
    in Postgres at the start, written by a concurrent run meanwhile, or found in the engine's
    journal); ``requests_done`` counts keys sent to the engine; ``cost_usd`` is what was paid now."""

    model: str
    node_id: str | None = None
    rows: int = 0
    distinct_keys: int = 0
    cache_hits: int = 0
    requests_total: int = 0
    requests_done: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_cost_usd: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    stopped: str | None = None  # None | "error" (on_error=fail) | "max_cost"
    first_error: FillError | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_progress(self) -> dict:
        return {
            "model": self.model, "node_id": self.node_id, "rows": self.rows, "distinct_keys": self.distinct_keys,
            "cache_hits": self.cache_hits, "requests_done": self.requests_done,
            "requests_total": self.requests_total, "errors": self.errors, "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8), "eta_s": self.eta_s, "elapsed_s": round(self.elapsed_s, 3),
        }

    def summary(self) -> str:
        text = (f"{self.model}: {self.rows} rows, {self.distinct_keys} distinct keys, {self.cache_hits} cached, "
                f"{self.requests_done} requested, {self.errors} failed, {self.tokens} tokens, "
                f"${self.cost_usd:.4f} paid, ${self.saved_cost_usd:.4f} saved, {self.elapsed_s:.1f}s")
        if self.stopped:
            text += f" (stopped: {self.stopped})"
        return text


# -- SQL helpers ----------------------------------------------------------------------------------
def quote_literal(value: Any) -> str:
    """A SQL literal for a string/number/bool/None (JSON values: give the JSON text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return repr(value)
    text = str(value).replace("\x00", "")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def _fresh(alias: str) -> str:
    return f"{alias}.valid and ({alias}.expires_at is null or {alias}.expires_at > now())"


def join_sql(source_sql: str, columns: Sequence[tuple[str, ColumnSpec, str]], audit_schema: str = "llm_audit",
             on_error_default: Any = None, source_columns: Sequence[str] | None = None) -> str:
    """SELECT of the source plus one column per spec, joined to ``llm_results`` on the row's key.

    ``columns``: ``(output column name, spec, fingerprint)`` triples. complete/classify give text
    (``output_text``), extract gives jsonb (``output_json``). Invalid or expired results count as
    missing (NULL). ``on_error_default``: a literal (or a ``{column name: literal}`` mapping) used
    where the prompt is not NULL but no answer exists (failed keys); for extract give JSON.
    ``source_columns``: when given, the source columns are listed explicitly and those named like an
    output column are left out (re-enriching a column replaces it); otherwise ``src.*``.
    The keys are computed in a LATERAL subquery that sees only the source, so prompt expressions may
    use any source column unqualified, even ones named like llm_results columns (key, model, ...).
    """
    if not columns:
        raise ValueError("join_sql: give at least one (name, spec, fingerprint) column")
    q = quote_ident(audit_schema)
    names = [name for name, _, _ in columns]
    if len(set(names)) != len(names):
        raise ConfigError([f"columns: output column names must be distinct, got {names}"], context="LLM columns")
    keys = ", ".join(f"{spec.key_sql(fp)} as __llm_k{i}" for i, (_, spec, fp) in enumerate(columns))
    if source_columns is None:
        select = ["__llm_src.*"]
    else:
        select = [f"__llm_src.{quote_ident(c)}" for c in source_columns if c not in names]
    joins = []
    for i, (name, spec, _) in enumerate(columns):
        r = f"__llm_r{i}"
        value = f"{r}.{spec.output_column}"
        default = on_error_default.get(name) if isinstance(on_error_default, Mapping) else on_error_default
        if default is not None:
            if spec.kind == "extract":
                literal = quote_literal(default if isinstance(default, str) else json.dumps(default)) + "::jsonb"
            else:
                literal = quote_literal(default) + "::text"
            value = f"case when __llm_k.__llm_k{i} is not null then coalesce({value}, {literal}) end"
        select.append(f"{value} as {quote_ident(name)}")
        joins.append(f"left join {q}.llm_results {r} on {r}.key = __llm_k.__llm_k{i} and {_fresh(r)}")
    return (f"select {', '.join(select)}\nfrom {source_sql} __llm_src\n"
            f"cross join lateral (select {keys}) __llm_k\n" + "\n".join(joins))


# -- shared run budget (max_cost_usd per dbt invocation) ------------------------------------------
class _Budgets:
    """Paid cost per (database, schema, run_id) in this process: concurrent fills of one dbt
    invocation (dbt threads) share it live; a run seen for the first time starts from llm_runs."""

    def __init__(self):
        self._spent: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def start(self, ident: tuple, load: Callable[[], float]) -> None:
        with self._lock:
            if ident in self._spent:
                return
        value = load()
        with self._lock:
            self._spent.setdefault(ident, value)

    def add(self, ident: tuple, amount: float) -> float:
        with self._lock:
            self._spent[ident] = self._spent.get(ident, 0.0) + amount
            return self._spent[ident]

    def spent(self, ident: tuple) -> float:
        with self._lock:
            return self._spent.get(ident, 0.0)


_budgets = _Budgets()
_sink_lock = threading.Lock()


def _buffered_sinks(engine) -> list:
    """The engine's draining sinks (BufferedSink); one is added if it has none."""
    sinks = getattr(engine, "sinks", None)
    dispatcher = getattr(engine, "log", None)
    if sinks is None:
        sinks = getattr(dispatcher, "sinks", ())
    found = [s for s in sinks if callable(getattr(s, "drain", None))]
    if found or dispatcher is None or not hasattr(dispatcher, "add"):
        return found
    with _sink_lock:
        found = [s for s in dispatcher.sinks if callable(getattr(s, "drain", None))]
        if not found:
            from ..logs import BufferedSink

            sink = BufferedSink()
            dispatcher.add(sink)
            found = [sink]
    return found


_DB_ERRORS: tuple = ()


def _db_errors() -> tuple:
    global _DB_ERRORS
    if not _DB_ERRORS:
        try:
            import psycopg2

            _DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
        except ImportError:  # pragma: no cover - psycopg2 comes with dbt-postgres
            _DB_ERRORS = (OSError,)
    return _DB_ERRORS


# -- the fill -------------------------------------------------------------------------------------
def fill_column(connect: Callable[[], Any], engine, source_sql: str, spec: ColumnSpec | Mapping, *,
                audit_schema: str = "llm_audit", run: RunContext, on_error: str = "null",
                cache_ttl_days: float | None = None, max_cost_usd: float | None = None,
                progress: Callable[[dict], None] | None = None, window: int = 256, chunk_rows: int = 500,
                claim_stale_s: float = 600.0, wait_timeout_s: float = 900.0,
                default_model: str | None = None) -> FillReport:
    """Make sure ``llm_results`` holds an answer for every distinct non-NULL prompt of ``source_sql``.

    ``connect()`` must return a NEW psycopg2 connection (two are opened: a reader holding the
    candidate cursor and the claims, and an autocommit writer); they are closed at the end.
    ``source_sql``: a relation (``"analytics"."reviews"``) or a parenthesized subquery.
    Returns a FillReport; with ``on_error="fail"`` raises ModelError after writing what was paid.
    """
    spec = ColumnSpec.from_dict(spec, default_model)
    return _Fill(connect, engine, spec, audit_schema=audit_schema, run=run, on_error=on_error,
                 cache_ttl_days=cache_ttl_days, max_cost_usd=max_cost_usd, progress=progress, window=window,
                 chunk_rows=chunk_rows, claim_stale_s=claim_stale_s,
                 wait_timeout_s=wait_timeout_s).run(source_sql)


class _Fill:
    def __init__(self, connect, engine, spec: ColumnSpec, *, audit_schema, run, on_error, cache_ttl_days,
                 max_cost_usd, progress, window, chunk_rows, claim_stale_s, wait_timeout_s, poll_s=0.25):
        if not isinstance(run, RunContext):
            raise TypeError("run: pass a RunContext(run_id=..., node_id=...)")
        if window < 1 or chunk_rows < 1:
            raise ValueError("window and chunk_rows must be >= 1")
        if max_cost_usd is not None and (not isinstance(max_cost_usd, (int, float)) or max_cost_usd <= 0):
            raise ConfigError([f"max_cost_usd: {max_cost_usd!r} must be a number > 0, or unset for no limit"])
        if cache_ttl_days is not None and (not isinstance(cache_ttl_days, (int, float)) or cache_ttl_days <= 0):
            raise ConfigError([f"cache_ttl_days: {cache_ttl_days!r} must be a number of days > 0, or unset"])
        self.connect = connect
        self.engine = engine
        self.spec = spec
        self.schema = audit_schema
        self.q = quote_ident(audit_schema)
        self.run_ctx = run
        self.fail_fast = on_error == "fail"
        self.ttl = timedelta(days=cache_ttl_days) if cache_ttl_days else None
        self.max_cost = max_cost_usd
        self.progress_cb = progress
        self.window = window
        self.chunk_rows = chunk_rows
        self.claim_stale_s = claim_stale_s
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.claim_batch = max(window, 64)
        self.token = uuid.uuid4().hex
        self.context = run.as_context(operation=spec.kind)
        model = engine.registry.get(spec.model)  # RegistryError (listing known models) if unknown
        self.model_config = model.config
        self.fingerprint = spec.fingerprint(self.model_config)
        self.report = FillReport(model=spec.model, node_id=run.node_id)
        self.sinks = _buffered_sinks(engine)
        self.reader = self.writer = None
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.last_heartbeat = time.monotonic()
        self.last_flush = time.monotonic()
        self.first_submit: float | None = None
        self.waiting: dict[str, str] = {}
        self._results: list[ResultRow] = []
        self._ok_keys: list[str] = []
        self._errors: list[ErrorRow] = []
        self._done_keys: list[str] = []
        self._versions: dict[str, str | None] = {}
        self.budget_id: tuple | None = None
        self.engine_hits = 0
        self.answers_written = 0

    # -- connections ------------------------------------------------------------------------------
    def _open(self):
        conn = self.connect()
        conn.autocommit = True
        return conn

    def _write(self, fn, *args, **kwargs):
        """Run a writer on the writer connection; reconnect and retry once if the connection broke."""
        try:
            return fn(self.writer, self.schema, *args, **kwargs)
        except _db_errors() as exc:
            log.warning("audit write failed (%s); reconnecting and retrying once", redact(str(exc)).strip())
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = self._open()
            return fn(self.writer, self.schema, *args, **kwargs)

    # -- main -------------------------------------------------------------------------------------
    def run(self, source_sql: str, rows_hint: int | None = None) -> FillReport:
        rep = self.report
        try:
            self.writer = self._open()
            ensure_migrated(self.writer, self.schema)
            self.reader = self._open()
            if self.max_cost is not None:
                self.budget_id = _db_identity(self.writer, self.schema) + (self.run_ctx.run_id,)
                _budgets.start(self.budget_id, self._load_run_cost)
            self._count_and_log_hits(source_sql)
            if rows_hint is not None:
                rep.rows = rows_hint
            self._emit_progress(force=True)
            cursor = self.reader.cursor(name=f"llm_fill_{self.token}", withhold=True)
            cursor.itersize = self.claim_batch
            cursor.execute(self._candidates_sql(source_sql))
            try:
                self._request(self._claimed_inputs(cursor))
                if rep.stopped == "max_cost":
                    self._fail_unrequested(cursor, ErrorKind.QUOTA, "max_cost_usd_per_run reached")
            finally:
                try:
                    cursor.close()
                except Exception:
                    pass
            self._wait_for_others()
            self._flush(final=True)
        except BaseException:
            self._salvage()
            raise
        finally:
            self._release_all()
        self._finish()
        return rep

    def _load_run_cost(self) -> float:
        with self.writer.cursor() as cur:
            cur.execute(f"select cost_usd from {self.q}.llm_runs where run_id = %s", (self.run_ctx.run_id,))
            row = cur.fetchone()
        return float(row[0]) if row else 0.0

    def _prompts_sql(self, source_sql: str) -> str:
        return f"select distinct ({self.spec.prompt_sql})::text as p from {source_sql} __llm_src"

    def _key_expr(self, column: str) -> str:
        return key_sql(self.fingerprint, column)

    def _count_and_log_hits(self, source_sql: str) -> None:
        """One statement: rows, distinct keys, and the cached keys logged as cached llm_calls rows.

        It embeds user SQL, so it runs without parameters (values inlined with quote_literal)."""
        rep = self.report
        run_id, node_id, model, op = (quote_literal(v) for v in (self.run_ctx.run_id, self.run_ctx.node_id,
                                                                 self.spec.model, self.spec.kind))
        with self.writer.cursor() as cur:
            ensure_call_partitions(cur, self.schema, [datetime.now(timezone.utc)])
            cur.execute(f"""
                with d as ({self._prompts_sql(source_sql)}),
                     k as (select {self._key_expr('d.p')} as k from d where d.p is not null),
                     hits as (select r.key, r.cost_usd from k join {self.q}.llm_results r
                              on r.key = k.k and {_fresh('r')}),
                     ins as (insert into {self.q}.llm_calls (ts, run_id, node_id, model, operation, input_hash,
                                 attempt, latency_ms, cost_usd, cached, saved_cost_usd)
                             select now(), {run_id}, {node_id}, {model}, {op}, hits.key, 0, 0, 0, true,
                                    hits.cost_usd from hits
                             returning saved_cost_usd)
                select (select count(*) from {source_sql} __llm_src),
                       (select count(*) from k),
                       (select count(*) from ins),
                       (select coalesce(sum(saved_cost_usd), 0) from ins)""")
            rows, distinct, hits, saved = cur.fetchone()
        rep.rows, rep.distinct_keys, rep.cache_hits, rep.saved_cost_usd = int(rows), int(distinct), int(hits), float(saved)
        rep.requests_total = rep.distinct_keys - rep.cache_hits

    def _candidates_sql(self, source_sql: str) -> str:
        return f"""
            select c.k, c.p from (select {self._key_expr('d.p')} as k, d.p
                                  from ({self._prompts_sql(source_sql)}) d where d.p is not null) c
            where not exists (select 1 from {self.q}.llm_results r where r.key = c.k and {_fresh('r')})"""

    # -- claims -----------------------------------------------------------------------------------
    def _claim(self, keys: list[str]) -> list[str]:
        """Claim ``keys``; return those now ours that still need an answer (in input order)."""
        with self.reader.cursor() as cur:
            cur.execute(f"""
                insert into {self.q}.llm_claims (key, run_id, claimed_at, claim_token, backend_pid)
                select k, %s, now(), %s, pg_backend_pid() from unnest(%s::text[]) k
                on conflict (key) do nothing returning key""", (self.run_ctx.run_id, self.token, keys))
            mine = {row[0] for row in cur.fetchall()}
        return self._drop_answered([k for k in keys if k in mine])

    def _take_over(self, keys: list[str]) -> list[str]:
        """Claim keys whose claim vanished, went stale, or whose claiming session is gone."""
        with self.reader.cursor() as cur:
            cur.execute(f"""
                insert into {self.q}.llm_claims (key, run_id, claimed_at, claim_token, backend_pid)
                select k, %s, now(), %s, pg_backend_pid() from unnest(%s::text[]) k
                on conflict (key) do nothing returning key""", (self.run_ctx.run_id, self.token, keys))
            mine = {row[0] for row in cur.fetchall()}
            cur.execute(f"""
                update {self.q}.llm_claims c
                set run_id = %s, claim_token = %s, claimed_at = now(), backend_pid = pg_backend_pid()
                where c.key = any(%s::text[]) and c.claim_token is distinct from %s
                  and (c.claimed_at < now() - make_interval(secs => %s)
                       or not exists (select 1 from pg_stat_activity a where a.pid = c.backend_pid))
                returning c.key""",
                        (self.run_ctx.run_id, self.token, keys, self.token, float(self.claim_stale_s)))
            mine.update(row[0] for row in cur.fetchall())
        return self._drop_answered([k for k in keys if k in mine])

    def _drop_answered(self, keys: list[str]) -> list[str]:
        """Keys just claimed may have been answered by the previous claimer in between (it writes
        the result before releasing its claim): release and skip those."""
        if not keys:
            return keys
        with self.reader.cursor() as cur:
            cur.execute(f"select key from {self.q}.llm_results r where r.key = any(%s::text[]) and {_fresh('r')}",
                        (keys,))
            answered = {row[0] for row in cur.fetchall()}
        if answered:
            self._release(list(answered))
            self._log_late_hits(list(answered))
        return [k for k in keys if k not in answered]

    def _release(self, keys: list[str]) -> None:
        if not keys:
            return
        with self.reader.cursor() as cur:
            cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s and key = any(%s::text[])",
                        (self.token, keys))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self.last_heartbeat = now
        with self.reader.cursor() as cur:
            cur.execute(f"update {self.q}.llm_claims set claimed_at = now() where claim_token = %s", (self.token,))

    def _release_all(self) -> None:
        for conn in (self.reader, self.writer):
            if conn is None or conn.closed:
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s", (self.token,))
                break
            except Exception:  # try the other connection; stale claims expire anyway
                continue
        for conn in (self.reader, self.writer):
            if conn is not None and not conn.closed:
                try:
                    conn.close()
                except Exception:
                    pass

    # -- requesting -------------------------------------------------------------------------------
    def _claimed_inputs(self, cursor) -> Iterator[tuple[str, ModelInput]]:
        spec = self.spec
        while not self.report.stopped:
            batch = cursor.fetchmany(self.claim_batch)
            if not batch:
                return
            prompts = dict(batch)
            mine = self._claim(list(prompts))
            mine_set = set(mine)
            for key in prompts:
                if key not in mine_set:
                    self.waiting[key] = prompts[key]
            for i, key in enumerate(mine):
                if self.report.stopped:
                    rest = mine[i:]
                    self._release(rest)
                    if self.report.stopped == "max_cost":
                        self._fail_keys(rest, ErrorKind.QUOTA, "max_cost_usd_per_run reached")
                    return
                if self.first_submit is None:
                    self.first_submit = time.monotonic()
                yield key, spec.model_input(prompts[key])

    def _request(self, inputs: Iterable[tuple[str, ModelInput]]) -> None:
        for key, output in self.engine.map_unordered(self.spec.model, inputs, window=self.window,
                                                     context=self.context):
            self._on_output(key, output)
            if len(self._results) + len(self._errors) >= self.chunk_rows \
                    or time.monotonic() - self.last_flush >= PROGRESS_EVERY_S:
                self._flush()
            self._emit_progress()

    def _stored_cost(self, key: str, output) -> float:
        if not output.cached:
            return float(output.cost_usd or 0.0)
        cache = getattr(self.engine, "cache", None)
        try:
            entry = cache.get_entry(key) if cache is not None else None
        except Exception:
            entry = None
        return float(getattr(entry, "original_cost_usd", 0.0) or 0.0)

    def _model_version(self, name: str | None) -> str | None:
        if name is None:
            return self.model_config.model_version
        if name not in self._versions:
            try:
                self._versions[name] = self.engine.registry.get(name).config.model_version
            except Exception:
                self._versions[name] = None
        return self._versions[name]

    def _on_output(self, key: str, output) -> None:
        rep = self.report
        rep.requests_done += 1
        paid = 0.0 if output.cached else float(output.cost_usd or 0.0)
        if not output.cached:
            rep.prompt_tokens += output.tokens.prompt
            rep.completion_tokens += output.tokens.completion
            rep.cost_usd += paid
        if output.ok:
            stored = self._stored_cost(key, output)
            if output.cached:  # from the engine's journal / a concurrent caller: nothing paid now
                self.engine_hits += 1
                rep.cache_hits += 1
                rep.requests_total -= 1
                rep.saved_cost_usd += stored
            is_json = self.spec.kind == "extract"
            self._results.append(ResultRow(
                key=key, model=output.model or self.spec.model, model_version=self._model_version(output.model),
                fingerprint=self.fingerprint,
                output_text=None if is_json else output.text,
                output_json=json.dumps(output.value, ensure_ascii=False, separators=(",", ":")) if is_json else None,
                confidence=output.confidence, prompt_tokens=output.tokens.prompt,
                completion_tokens=output.tokens.completion, cost_usd=stored, truncated=bool(output.truncated),
                expires_at=(datetime.now(timezone.utc) + self.ttl) if self.ttl else None,
                run_id=self.run_ctx.run_id))
            self._ok_keys.append(key)
        else:
            self._add_error(key, str(output.error_kind), output.error_message or "")
        if paid and self.budget_id is not None:
            spent = _budgets.add(self.budget_id, paid)
            if self.max_cost is not None and spent >= self.max_cost and not rep.stopped:
                rep.stopped = "max_cost"
                log.warning("max_cost_usd %.4f reached (run has paid %.4f): no more requests for %s",
                            self.max_cost, spent, self.run_ctx.node_id or self.spec.model)

    def _add_error(self, key: str, kind: str, message: str) -> None:
        rep = self.report
        rep.errors += 1
        message = redact(message)
        self._errors.append(ErrorRow(key=key, node_id=self.run_ctx.node_id, model=self.spec.model,
                                     error_kind=kind, message=message, run_id=self.run_ctx.run_id))
        if rep.first_error is None:
            rep.first_error = FillError(key=key, kind=kind, message=message)
        if self.fail_fast and not rep.stopped:
            rep.stopped = "error"

    def _fail_keys(self, keys: list[str], kind: ErrorKind, message: str) -> None:
        for key in keys:
            self._add_error(key, kind.value, message)
            if len(self._errors) >= self.chunk_rows * 4:
                self._flush()

    def _fail_unrequested(self, cursor, kind: ErrorKind, message: str) -> None:
        """After max_cost: the keys never requested are failures (not claimed, not requested)."""
        if self.fail_fast:  # stop at once: fail the next batch only, so the raise names a key
            self._fail_keys([k for k, _ in cursor.fetchmany(self.claim_batch)], kind, message)
            self._flush()
            return
        while True:
            batch = cursor.fetchmany(self.claim_batch * 4)
            if not batch:
                break
            self._fail_keys([k for k, _ in batch], kind, message)
        self._flush()

    # -- keys claimed by other runs ---------------------------------------------------------------
    def _wait_for_others(self) -> None:
        deadline = time.monotonic() + self.wait_timeout_s
        delay = self.poll_s
        while self.waiting:
            if self.report.stopped == "error":
                return  # failing anyway: don't wait
            self._flush()
            keys = list(self.waiting)
            with self.reader.cursor() as cur:
                cur.execute(f"select key from {self.q}.llm_results r where r.key = any(%s::text[]) and {_fresh('r')}",
                            (keys,))
                done = [row[0] for row in cur.fetchall()]
            if done:
                self._log_late_hits(done)
                for key in done:
                    self.waiting.pop(key, None)
            if not self.waiting:
                return
            mine = self._take_over(list(self.waiting))
            if mine:
                prompts = {k: self.waiting.pop(k) for k in mine}
                if self.report.stopped == "max_cost":
                    self._release(mine)
                    self._fail_keys(mine, ErrorKind.QUOTA, "max_cost_usd_per_run reached")
                else:
                    self._request((k, self.spec.model_input(p)) for k, p in prompts.items())
                delay = self.poll_s
                continue
            if time.monotonic() >= deadline:
                self._fail_keys(list(self.waiting), ErrorKind.TIMEOUT,
                                f"gave up after {self.wait_timeout_s:.0f}s waiting for another run that "
                                "claimed this key to answer it")
                self.waiting.clear()
                return
            self._heartbeat()
            self._emit_progress()
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def _log_late_hits(self, keys: list[str]) -> None:
        """Keys answered by a concurrent run while we waited: cache hits for us (one INSERT ... SELECT)."""
        with self.writer.cursor() as cur:
            ensure_call_partitions(cur, self.schema, [datetime.now(timezone.utc)])
            cur.execute(f"""
                with ins as (
                    insert into {self.q}.llm_calls (ts, run_id, node_id, model, operation, input_hash, attempt,
                                                   latency_ms, cost_usd, cached, saved_cost_usd)
                    select now(), %s, %s, %s, %s, r.key, 0, 0, 0, true, r.cost_usd
                    from {self.q}.llm_results r where r.key = any(%s::text[])
                    returning saved_cost_usd)
                select count(*), coalesce(sum(saved_cost_usd), 0) from ins""",
                        (self.run_ctx.run_id, self.run_ctx.node_id, self.spec.model, self.spec.kind, keys))
            hits, saved = cur.fetchone()
        self.report.cache_hits += int(hits)
        self.report.requests_total -= int(hits)
        self.report.saved_cost_usd += float(saved)

    # -- writing ----------------------------------------------------------------------------------
    def _flush(self, final: bool = False) -> None:
        results, ok_keys, errors = self._results, self._ok_keys, self._errors
        self._results, self._ok_keys, self._errors = [], [], []
        if results:
            try:
                self.answers_written += self._write(write_results, results)
            except BaseException as exc:
                self._results = results + self._results  # let _salvage try again
                self._ok_keys = ok_keys + self._ok_keys
                if not isinstance(exc, Exception):
                    raise
                kept = ("they are kept in the engine's journal and the next run reuses them without paying"
                        if getattr(self.engine, "cache", None) is not None else
                        "the engine has no result cache configured, so they may have to be requested again")
                raise PgLlmError(f"could not write {len(results)} answer(s) of model '{self.spec.model}' to "
                                 f"{self.schema}.llm_results: {redact(str(exc)).strip()}; {kept}") from exc
        if ok_keys:
            self._write(resolve_errors, ok_keys)
        if errors:
            self._write(write_errors, errors)
        self._release(ok_keys + [e.key for e in errors])  # results are committed: let others see them
        self._drain_logs()
        self._heartbeat()
        self.last_flush = time.monotonic()

    def _drain_logs(self) -> None:
        for sink in self.sinks:
            logs = sink.drain()
            if logs:
                self._write(write_calls, logs, defaults=self.run_ctx.as_context())

    def _salvage(self) -> None:
        """On the way out after an error: write what was paid if at all possible."""
        if not self._results:
            return
        try:
            if self.writer is None or self.writer.closed:
                self.writer = self._open()
            self.answers_written += self._write(write_results, self._results)
            self._results = []
        except Exception as exc:
            log.error("could not write %d paid answers to %s.llm_results (%s); they are kept in the "
                      "engine's journal and the next run reuses them without paying",
                      len(self._results), self.schema, redact(str(exc)).strip())

    def _emit_progress(self, force: bool = False) -> None:
        if self.progress_cb is None:
            return
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        rep = self.report
        rep.elapsed_s = now - self.started
        rep.eta_s = self._eta(now)
        try:
            self.progress_cb(rep.as_progress())
        except Exception:  # a progress printer must never fail a run
            log.exception("progress callback failed")

    def _eta(self, now: float) -> float | None:
        rep = self.report
        remaining = max(rep.requests_total - rep.requests_done, 0)
        if remaining == 0:
            return 0.0
        if self.first_submit is None or rep.requests_done == 0:
            return None
        rate = rep.requests_done / max(now - self.first_submit, 1e-6)
        return round(remaining / rate, 1)

    def _finish(self) -> None:
        rep = self.report
        rep.elapsed_s = time.monotonic() - self.started
        rep.eta_s = 0.0 if not rep.stopped else None
        failed = self.fail_fast and rep.first_error is not None
        try:
            writer = self._open()
            try:
                record_run(writer, self.schema, self.run_ctx.run_id, target=self.run_ctx.target,
                           status="error" if failed else "success", rows=rep.rows,
                           distinct_keys=rep.distinct_keys, requests=rep.requests_done - self.engine_hits,
                           cache_hits=rep.cache_hits, errors=rep.errors, prompt_tokens=rep.prompt_tokens,
                           completion_tokens=rep.completion_tokens, cost_usd=rep.cost_usd,
                           saved_cost_usd=rep.saved_cost_usd)
            finally:
                writer.close()
        except Exception as exc:
            log.error("could not record the run in %s.llm_runs: %s", self.schema, redact(str(exc)).strip())
        if self.progress_cb is not None:
            self.last_progress = 0.0
            self._emit_progress(force=True)
        if failed:
            err = rep.first_error
            who = f"{self.run_ctx.node_id}: " if self.run_ctx.node_id else ""
            raise ModelError(
                err.kind,
                f"{who}model '{self.spec.model}': {rep.errors} key(s) failed and on_error is 'fail', so the fill "
                f"stopped after {rep.requests_done} of {rep.requests_total} requests; first error, for key "
                f"{err.key[:16]}: {err.kind}: {err.message}. The {self.answers_written} answer(s) already "
                f"received were kept in {self.schema}.llm_results (set on_error: 'null' to keep going).",
                model=self.spec.model)
