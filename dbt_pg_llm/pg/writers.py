"""Bulk writers for the audit schema: COPY (text format) from an in-memory buffer.

Every writer runs one transaction on the connection it is given and commits it (give it an
autocommit connection, or one with no transaction open). Upserts COPY into a session temp table
first and then ``INSERT ... SELECT ... ON CONFLICT`` into the real table, so a batch is one round
trip of data plus one statement, whatever its size; rows go in key order, so two writers of
overlapping keys wait for each other instead of deadlocking (as claims do, claims.py).

COPY text format, escaped here: backslash, tab, newline and carriage return are backslash-escaped,
``\\N`` is NULL. Postgres text cannot hold NUL (U+0000): it is removed from text and from JSON
strings. Text that is not valid Unicode (lone surrogates) has the bad characters replaced.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable, Mapping, Sequence

from ..errors import redact
from .migrations import ensure_call_partitions, quote_ident, transaction
from .run_totals import derive_run_totals

__all__ = [
    "ResultRow",
    "ErrorRow",
    "RESULT_COLUMNS",
    "CALL_COLUMNS",
    "copy_rows",
    "write_results",
    "write_calls",
    "call_rows",
    "write_errors",
    "resolve_errors",
    "write_alerts",
    "record_run",
    "money",
    "RUN_OUTCOMES",
]


@dataclass
class ResultRow:
    """One row of ``llm_results``. ``output_json``: a ``str`` is taken as JSON text; any other
    value (dict, list, number, ...) is serialized."""

    key: str
    model: str
    model_version: str | None = None
    fingerprint: str | None = None
    output_text: str | None = None
    output_json: Any = None
    confidence: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | Decimal = 0.0
    truncated: bool = False
    expires_at: datetime | None = None
    valid: bool = True
    run_id: str | None = None
    # provenance (migration 11): who asked, and the prompt (None when llm.store_prompts is false)
    node_id: str | None = None
    column_name: str | None = None
    prompt: str | None = None
    # migration 14: of prompt_tokens, read from / written to the provider's prompt cache
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def of_answer(cls, key: str, output, *, is_json: bool, model: str, model_version: str | None,
                  fingerprint: str | None, cost_usd: float, ttl: timedelta | None, run_id: str | None,
                  node_id: str | None, column_name: str | None, prompt: str | None) -> "ResultRow":
        """The row of a successful answer (a ``ModelOutput``): its text, or its value as JSON text for
        extract and multi-label classify (``is_json``); its tokens; expiring ``ttl`` from now."""
        return cls(key=key, model=model, model_version=model_version, fingerprint=fingerprint,
                   output_text=None if is_json else output.text,
                   output_json=json.dumps(output.value, ensure_ascii=False, separators=(",", ":")) if is_json else None,
                   confidence=output.confidence, prompt_tokens=output.tokens.prompt,
                   completion_tokens=output.tokens.completion, cost_usd=cost_usd, truncated=bool(output.truncated),
                   expires_at=(datetime.now(timezone.utc) + ttl) if ttl else None, run_id=run_id, node_id=node_id,
                   column_name=column_name, prompt=prompt, cached_tokens=output.tokens.cached,
                   cache_write_tokens=output.tokens.cache_write)


RESULT_COLUMNS = tuple(f.name for f in fields(ResultRow))


@dataclass
class ErrorRow:
    """One dead letter: the key of a failed request, for one model node."""

    key: str
    node_id: str | None
    model: str | None
    error_kind: str
    message: str | None
    run_id: str | None = None
    attempts: int = 0  # HTTP requests made for it this time (0: never sent, e.g. budget or open circuit)
    column_name: str | None = None  # the LLM column that asked (migration 17)


ERROR_COLUMNS = tuple(f.name for f in fields(ErrorRow))

CALL_COLUMNS = (
    "ts", "run_id", "node_id", "model", "operation", "input_hash", "attempt", "error_kind", "error_message",
    "http_status", "prompt_tokens", "completion_tokens", "latency_ms", "cost_usd", "cached", "saved_cost_usd",
    "column_name", "call_id",  # migration 15: the column that asked; the engine's id of the request
    "cached_tokens", "cache_write_tokens", "prompt_cache_saved_usd",  # migration 14: provider prompt caching
)

def money(value: Any) -> Decimal:
    """A cost as an exact decimal of at most 10 places: float sums (0.0027599999999999764) are
    rounded before they reach a ``numeric`` column."""
    if isinstance(value, Decimal):
        return round(value, 10)
    return Decimal(repr(round(float(value or 0.0), 10)))


# -- COPY text encoding -----------------------------------------------------------------------------
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": None})
_JSON_MARK = object()


def _strip_nul(value: Any) -> Any:
    """Remove NUL from every string inside a JSON value (jsonb rejects \\u0000)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip_nul(v) for v in value]
    return value


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # already JSON text: parse to validate and to clean NULs
        if "\\u0000" not in value and "\x00" not in value:
            return value
        value = json.loads(value, strict=False)
    return json.dumps(_strip_nul(value), ensure_ascii=False, separators=(",", ":"))


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value).translate(_ESCAPES)


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from a bad "\ud800" JSON escape)
        return text.encode("utf-8", "replace")


def copy_rows(cur, table_sql: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` (sequences of Python values, in ``columns`` order) into ``table_sql``."""
    lines = ["\t".join([_field(v) for v in row]) for row in rows]
    if not lines:
        return 0
    data = _encode("\n".join(lines) + "\n")
    if cur.connection.encoding not in ("UTF8", "UNICODE"):
        cur.execute("set local client_encoding = 'UTF8'")
    cols = ", ".join(quote_ident(c) for c in columns)
    cur.copy_expert(f"copy {table_sql} ({cols}) from stdin with (format text)", io.BytesIO(data))
    return len(lines)


def _as_tuple(row: Any, columns: Sequence[str]) -> tuple:
    if isinstance(row, Mapping):
        return tuple(row.get(c) for c in columns)
    return tuple(getattr(row, c) for c in columns)


# -- llm_results ----------------------------------------------------------------------------------
def write_results(conn, schema: str, rows: Iterable[ResultRow | Mapping]) -> int:
    """Upsert cache rows (COPY to a temp table, then INSERT ... ON CONFLICT (key) DO UPDATE).

    A key that is already present is replaced: that is how a re-requested invalid or expired row
    comes back to life (``invalidated_at`` is cleared). Duplicate keys within one batch keep the last one. Returns rows written.
    """
    q = quote_ident(schema)
    defaults = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "truncated": False, "valid": True,
                "cached_tokens": 0, "cache_write_tokens": 0}
    prepared = []
    for row in rows:
        values = dict(zip(RESULT_COLUMNS, _as_tuple(row, RESULT_COLUMNS)))
        for name, default in defaults.items():
            if values[name] is None:
                values[name] = default
        values["output_json"] = _json_text(values["output_json"])
        values["cost_usd"] = money(values["cost_usd"])
        prepared.append(tuple(values[c] for c in RESULT_COLUMNS))
    if not prepared:
        return 0
    # last one wins for duplicate keys (DISTINCT ON keeps the first of each key in this order)
    seen: dict[str, int] = {}
    for i, values in enumerate(prepared):
        seen[values[0]] = i
    if len(seen) != len(prepared):
        prepared = [prepared[i] for i in sorted(seen.values())]
    cols = ", ".join(RESULT_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in RESULT_COLUMNS if c != "key")
    with transaction(conn) as cur:
        cur.execute(f"create temp table if not exists llm_results_stage "
                    f"(like {q}.llm_results including defaults) on commit delete rows")
        copy_rows(cur, "pg_temp.llm_results_stage", RESULT_COLUMNS, prepared)
        cur.execute(f"""
            insert into {q}.llm_results ({cols}, created_at)
            select {cols}, now() from pg_temp.llm_results_stage order by key
            on conflict (key) do update set {updates}, created_at = excluded.created_at,
                invalidated_at = null""")
        return cur.rowcount


# -- llm_calls ------------------------------------------------------------------------------------
def _call_values(log: Any, defaults: Mapping[str, Any]) -> tuple:
    if isinstance(log, Mapping):
        get = log.get
        context = log.get("context") or {}
    else:
        def get(name, default=None):
            return getattr(log, name, default)
        context = getattr(log, "context", None) or {}
    ts = get("ts") or get("timestamp") or datetime.now(timezone.utc)
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts, timezone.utc)
    kind = get("error_kind")
    kind = None if kind is None or str(kind) in ("none", "") else str(kind)
    message = get("error_message")
    saved = get("saved_cost_usd")
    if saved is None:
        saved = context.get("saved_cost_usd", 0.0)
    return (
        ts,
        get("run_id") or context.get("run_id") or defaults.get("run_id"),
        get("node_id") or context.get("node_id") or defaults.get("node_id"),
        get("model"),
        context.get("operation") or get("operation"),  # the caller's operation (e.g. classify) wins
        get("input_hash"),
        get("attempt"),
        kind,
        redact(message) if message else None,
        get("http_status"),
        get("prompt_tokens") or 0,
        get("completion_tokens") or 0,
        get("latency_ms"),
        money(get("cost_usd")),
        bool(get("cached") or False),
        money(saved),
        get("column_name") or context.get("column_name") or defaults.get("column_name"),
        get("call_id"),
        get("cached_tokens") or 0,
        get("cache_write_tokens") or 0,
        money(get("prompt_cache_saved_usd")),
    )


def call_rows(logs: Iterable[Any], defaults: Mapping[str, Any] | None = None) -> list[tuple]:
    """``llm_calls`` rows in ``CALL_COLUMNS`` order from records (``ModelLog`` objects or mappings),
    for writers that COPY them inside a transaction of their own (``batch_store``)."""
    return [_call_values(log, defaults or {}) for log in logs]


def write_calls(conn, schema: str, logs: Iterable[Any], *, defaults: Mapping[str, Any] | None = None) -> int:
    """Append call records (``ModelLog`` objects or mappings) to ``llm_calls``.

    ``run_id`` / ``node_id`` come from each record's ``context`` (falling back to ``defaults``);
    ``context["operation"]`` (the fill's column kind) overrides the record's generic operation;
    ``context["saved_cost_usd"]`` (set by the engine on cache hits) fills ``saved_cost_usd``; the
    success kind "none" is stored as NULL. The monthly partitions needed are created first.
    """
    rows = [_call_values(log, defaults or {}) for log in logs]
    if not rows:
        return 0
    with transaction(conn) as cur:
        ensure_call_partitions(cur, schema, [r[0] for r in rows])
        return copy_rows(cur, f"{quote_ident(schema)}.llm_calls", CALL_COLUMNS, rows)


# -- llm_errors -----------------------------------------------------------------------------------
def write_errors(conn, schema: str, errors: Iterable[ErrorRow | Mapping]) -> int:
    """Upsert dead letters: a new (key, node_id) is inserted; a known one adds this time's
    ``attempts`` (the HTTP requests really made), gets the latest kind/message/run/column and
    ``last_seen = now()``, and is reopened (``resolved_at`` NULL). Each row is also appended to
    ``llm_error_history`` (one row per failed attempt-set), in the same transaction."""
    q = quote_ident(schema)
    rows: dict[tuple, tuple] = {}
    for err in errors:
        key, node_id, model, kind, message, run_id, attempts, column = _as_tuple(err, ERROR_COLUMNS)
        node_id = node_id or ""
        rows[(key, node_id)] = (key, node_id, model, str(kind), redact(message) if message else message, run_id,
                                int(attempts or 0), column)
    if not rows:
        return 0
    with transaction(conn) as cur:
        cur.execute("create temp table if not exists llm_errors_stage3 (key text, node_id text, model text, "
                    "error_kind text, message text, run_id text, attempts integer, column_name text) "
                    "on commit delete rows")
        copy_rows(cur, "pg_temp.llm_errors_stage3", ERROR_COLUMNS, rows.values())
        cur.execute(f"""
            insert into {q}.llm_error_history (key, node_id, column_name, model, error_kind, message, attempts, run_id)
            select key, node_id, column_name, model, error_kind, message, attempts, run_id
            from pg_temp.llm_errors_stage3""")
        cur.execute(f"""
            insert into {q}.llm_errors as e (key, node_id, model, error_kind, message, run_id, attempts, column_name)
            select key, node_id, model, error_kind, message, run_id, attempts, column_name
            from pg_temp.llm_errors_stage3
            order by key, node_id
            on conflict (key, node_id) do update set
                attempts = e.attempts + excluded.attempts, last_seen = now(), model = excluded.model,
                error_kind = excluded.error_kind, message = excluded.message, run_id = excluded.run_id,
                column_name = coalesce(excluded.column_name, e.column_name), resolved_at = null""")
        return cur.rowcount


def resolve_errors(conn, schema: str, keys: Sequence[str]) -> int:
    """Mark the open dead letters of ``keys`` (any node) resolved now; returns how many."""
    keys = list(keys)
    if not keys:
        return 0
    with transaction(conn) as cur:
        cur.execute(f"update {quote_ident(schema)}.llm_errors set resolved_at = now() "
                    "where resolved_at is null and key = any(%s::text[])", (keys,))
        return cur.rowcount


# -- llm_alerts -----------------------------------------------------------------------------------
def write_alerts(conn, schema: str, alerts: Iterable[Any], *, run_id: str | None = None) -> int:
    """Append alerts (``alerts.ModelAlert`` objects or mappings with model/type/message/severity/ts)."""
    rows = []
    for alert in alerts:
        get = alert.get if isinstance(alert, Mapping) else (lambda n, d=None, a=alert: getattr(a, n, d))
        rows.append((
            get("ts") or datetime.now(timezone.utc),
            get("run_id") or run_id,
            get("model"),
            get("alert_type") or get("type"),
            redact(get("message") or ""),
            get("severity") or "warning",
        ))
    if not rows:
        return 0
    with transaction(conn) as cur:
        return copy_rows(cur, f"{quote_ident(schema)}.llm_alerts",
                         ("ts", "run_id", "model", "alert_type", "message", "severity"), rows)


# -- llm_runs -------------------------------------------------------------------------------------
_RUN_COUNTS = ("rows", "distinct_keys", "requests", "cache_hits", "errors", "prompt_tokens",
               "completion_tokens", "cost_usd", "saved_cost_usd")
_MONEY_COUNTS = ("cost_usd", "saved_cost_usd")
RUN_OUTCOMES = ("success", "partial", "failed")  # ascending: a run's outcome is its worst fill's


def _worst(a: str, b: str) -> str:
    """SQL: the worse of two outcomes (NULL-safe)."""
    rank = "array_position(array['success', 'partial', 'failed'], {})"
    return (f"(array['success', 'partial', 'failed'])[greatest({rank.format(a)}, {rank.format(b)})]")


def record_run(conn, schema: str, run_id: str, *, target: str | None = None, status: str | None = None,
               ended: bool = True, finished_fill: bool = False, **counts: int | float) -> None:
    """Upsert the ``llm_runs`` row of an invocation, ADDING ``counts`` to what is there (several
    models of one invocation add up). ``status``: the outcome of what is recorded now, one of
    ``success`` / ``partial`` (some rows NULL) / ``failed`` ("error" is read as failed); the row
    keeps the worst outcome, and says ``running`` while other fills started by ``run_started``
    are active (``finished_fill``: this call ends one of them). ``ended`` stamps ``ended_at``.
    Count names: rows, distinct_keys, requests, cache_hits, errors, prompt_tokens,
    completion_tokens, cost_usd, saved_cost_usd. Whatever is passed, requests, tokens, cost,
    cache_hits and saved_cost_usd end up derived from the run's ``llm_calls`` rows
    (``run_totals.derive_run_totals``, in the same transaction): one source of truth."""
    unknown = sorted(set(counts) - set(_RUN_COUNTS))
    if unknown:
        raise TypeError(f"record_run: unknown count(s) {unknown}; known: {', '.join(_RUN_COUNTS)}")
    if status == "error":
        status = "failed"
    if status is not None and status not in RUN_OUTCOMES:
        raise ValueError(f"record_run: status {status!r} must be one of {', '.join(RUN_OUTCOMES)}")
    values = [money(counts.get(c)) if c in _MONEY_COUNTS else (counts.get(c) or 0) for c in _RUN_COUNTS]
    q = quote_ident(schema)
    cols = ", ".join(_RUN_COUNTS)
    adds = ", ".join(f"{c} = r.{c} + excluded.{c}" for c in _RUN_COUNTS)
    placeholders = ", ".join(["%s"] * len(_RUN_COUNTS))
    active = "greatest(r.active_fills - %s, 0)"
    with transaction(conn) as cur:
        cur.execute(f"""
            insert into {q}.llm_runs as r (run_id, target, status, outcome, heartbeat_at, ended_at, {cols})
            values (%s, %s, %s, %s, now(), case when %s then now() end, {placeholders})
            on conflict (run_id) do update set {adds},
                target = coalesce(excluded.target, r.target),
                outcome = {_worst('r.outcome', 'excluded.outcome')},
                active_fills = {active},
                status = case when {active} > 0 then 'running'
                              else coalesce({_worst('r.outcome', 'excluded.outcome')}, r.status) end,
                heartbeat_at = now(),
                ended_at = case when {active} > 0 then null else coalesce(excluded.ended_at, r.ended_at) end""",
                    [run_id, target, status, status, bool(ended), *values,
                     int(finished_fill), int(finished_fill), int(finished_fill)])
        derive_run_totals(cur, schema, run_id)  # the counters llm_calls describes come from it (run_totals.py)
