"""What the LLM columns cost and how they behaved over the last N days, read from the audit schema.

Plain SQL over ``llm_calls`` (one row per call, and one per cache hit with ``cached = true``),
``llm_errors`` (dead letters) and ``llm_alerts``; it only reads. Used by the ``pg_llm.report``
run-operation (``usage_by_model`` + ``format_usage``) and by the HTML report
(``python -m dbt_pg_llm report --html``: the ``*_series`` functions feed its charts).

Definitions (the same as the ``llm_metrics`` view's):

* requests: calls sent to a provider (each with its retries); errors: those that failed, by kind;
* latency percentiles over requests (cache hits take no time worth measuring);
* cache hit rate: cache hits / (cache hits + requests); saved: what the cached answers cost when paid;
* provider prompt cache: of the requests' input tokens, those the provider read from its prompt
  cache (cached share = cached / input tokens) and wrote to it; saved = ``prompt_cache_saved_usd``,
  what those requests would have cost at the plain input price minus what they cost (decision 0028);
* open dead letters: keys whose last request failed and that no later run resolved (all time);
* open alerts: the alerts of the model's latest run in the window (an alert a later run did not
  raise again is over: ``llm_alerts`` rows are raised once per run, model and type).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .migrations import quote_ident, validate_schema_name

__all__ = [
    "settle_for_report",
    "ModelUsage",
    "usage_by_model",
    "prompt_cache_line",
    "format_usage",
    "audit_schema_exists",
    "daily_series",
    "error_kind_series",
    "latency_samples",
    "top_nodes",
]


@dataclass(frozen=True)
class ModelUsage:
    model: str
    requests: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    saved_cost_usd: float = 0.0
    open_dead_letters: int = 0
    open_alerts: tuple[str, ...] = ()
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)
    prompt_cache_saved_usd: float = 0.0

    @property
    def cached_share(self) -> float | None:
        """The share of input tokens the provider read from its prompt cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    @property
    def cache_hit_rate(self) -> float | None:
        looked_up = self.cache_hits + self.requests
        return self.cache_hits / looked_up if looked_up else None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "requests": self.requests, "errors": self.errors,
                "errors_by_kind": dict(self.errors_by_kind), "p50_latency_ms": self.p50_latency_ms,
                "p95_latency_ms": self.p95_latency_ms, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd,
                "cache_hits": self.cache_hits, "cache_hit_rate": self.cache_hit_rate,
                "saved_cost_usd": self.saved_cost_usd, "open_dead_letters": self.open_dead_letters,
                "open_alerts": list(self.open_alerts), "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens, "cached_share": self.cached_share,
                "prompt_cache_saved_usd": self.prompt_cache_saved_usd}


def _window(days: float) -> float:
    if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
        raise ValueError(f"days: {days!r} must be a positive number of days, e.g. 7")
    return float(days) * 86400.0


def audit_schema_exists(conn, schema: str) -> bool:
    """True if ``schema`` holds the audit tables (a report of a fresh database says so instead of failing)."""
    validate_schema_name(schema)
    with conn.cursor() as cur:
        cur.execute("select to_regclass(%s) is not null", (f"{quote_ident(schema)}.llm_calls",))
        return bool(cur.fetchone()[0])


def _rows(conn, sql: str, params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def usage_by_model(conn, schema: str, days: float = 7) -> list[ModelUsage]:
    """One ModelUsage per model with calls in the last ``days`` days, most expensive first."""
    secs = _window(days)
    validate_schema_name(schema)
    q = quote_ident(schema)
    rows = _rows(conn, f"""
        with calls as (
            select * from {q}.llm_calls where ts >= now() - make_interval(secs => %(secs)s)
        ), per_model as (
            select model,
                   count(*) filter (where not cached)                                          as requests,
                   count(*) filter (where not cached and error_kind is not null)               as errors,
                   percentile_cont(0.5) within group (order by latency_ms) filter (where not cached)  as p50,
                   percentile_cont(0.95) within group (order by latency_ms) filter (where not cached) as p95,
                   coalesce(sum(prompt_tokens) filter (where not cached), 0)                   as prompt_tokens,
                   coalesce(sum(completion_tokens) filter (where not cached), 0)               as completion_tokens,
                   coalesce(sum(cost_usd), 0)                                                  as cost_usd,
                   count(*) filter (where cached)                                              as cache_hits,
                   coalesce(sum(saved_cost_usd) filter (where cached), 0)                      as saved_cost_usd,
                   coalesce(sum(cached_tokens) filter (where not cached), 0)                   as cached_tokens,
                   coalesce(sum(cache_write_tokens) filter (where not cached), 0)              as cache_write_tokens,
                   coalesce(sum(prompt_cache_saved_usd) filter (where not cached), 0)          as pc_saved,
                   (array_agg(run_id order by ts desc))[1]                                     as last_run
            from calls group by model
        ), kinds as (
            select model, jsonb_object_agg(error_kind, n) as by_kind
            from (select model, error_kind, count(*) as n from calls
                  where not cached and error_kind is not null group by model, error_kind) k
            group by model
        ), dead as (
            select model, count(*) as n from {q}.llm_errors where resolved_at is null group by model
        )
        select p.model, p.requests, p.errors, coalesce(k.by_kind, '{{}}'::jsonb), p.p50, p.p95,
               p.prompt_tokens, p.completion_tokens, p.cost_usd, p.cache_hits, p.saved_cost_usd,
               coalesce(d.n, 0), p.cached_tokens, p.cache_write_tokens, p.pc_saved,
               coalesce((select array_agg('[' || upper(a.severity) || '] ' || a.alert_type || ': ' || a.message
                                          order by a.severity = 'critical' desc, a.ts)
                         from {q}.llm_alerts a
                         where a.model is not distinct from p.model and a.run_id = p.last_run
                           and a.ts >= now() - make_interval(secs => %(secs)s)), '{{}}')
        from per_model p
        left join kinds k on k.model is not distinct from p.model
        left join dead d on d.model is not distinct from p.model
        order by p.cost_usd desc, p.model""", {"secs": secs})
    return [ModelUsage(
        model=model or "?", requests=int(requests), errors=int(errors),
        errors_by_kind={str(k): int(v) for k, v in sorted((by_kind or {}).items(), key=lambda kv: -kv[1])},
        p50_latency_ms=None if p50 is None else float(p50), p95_latency_ms=None if p95 is None else float(p95),
        prompt_tokens=int(ptok), completion_tokens=int(ctok), cost_usd=float(cost), cache_hits=int(hits),
        saved_cost_usd=float(saved), open_dead_letters=int(dead), open_alerts=tuple(alerts or ()),
        cached_tokens=int(ctoks), cache_write_tokens=int(wtoks), prompt_cache_saved_usd=float(pc_saved))
        for model, requests, errors, by_kind, p50, p95, ptok, ctok, cost, hits, saved, dead, ctoks, wtoks, pc_saved,
        alerts in rows]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def format_usage(usage: list[ModelUsage], days: float, schema: str = "llm_audit") -> str:
    """The text the run-operation prints: one block per model, then the totals."""
    head = f"pg_llm usage report: last {days:g} day(s), from {schema}.llm_calls / llm_errors / llm_alerts"
    if not usage:
        return f"{head}\n  no LLM calls recorded in this window"
    lines = [head]
    for u in usage:
        rate = "-" if u.cache_hit_rate is None else f"{u.cache_hit_rate:.1%}"
        kinds = ", ".join(f"{k}={n}" for k, n in u.errors_by_kind.items()) or "none"
        lines += [
            f"model {u.model}",
            f"  requests {u.requests:,}, errors {u.errors:,} ({kinds}), open dead letters {u.open_dead_letters:,}",
            f"  latency p50 {_ms(u.p50_latency_ms)}, p95 {_ms(u.p95_latency_ms)}",
            f"  tokens {u.tokens:,} ({u.prompt_tokens:,} in, {u.completion_tokens:,} out), cost ${u.cost_usd:,.4f}",
            f"  cache hits {u.cache_hits:,}, hit rate {rate}, saved by the cache ${u.saved_cost_usd:,.4f}",
            prompt_cache_line(u),
            f"  open alerts: {len(u.open_alerts)}" + "".join(f"\n    {a}" for a in u.open_alerts),
        ]
    lines.append(f"total: {sum(u.requests for u in usage):,} requests, ${sum(u.cost_usd for u in usage):,.4f} paid, "
                 f"${sum(u.saved_cost_usd for u in usage):,.4f} saved by the cache, "
                 f"${sum(u.prompt_cache_saved_usd for u in usage):,.4f} by the provider's prompt cache")
    return "\n".join(lines)


def prompt_cache_line(u: ModelUsage) -> str:
    """'  provider prompt cache: 5,632 of 7,355 input tokens read from it (76.6%), 0 written, saved $1.2672'."""
    share = "-" if u.cached_share is None else f"{u.cached_share:.1%}"
    return (f"  provider prompt cache: {u.cached_tokens:,} of {u.prompt_tokens:,} input tokens read from it ({share}), "
            f"{u.cache_write_tokens:,} written, saved ${u.prompt_cache_saved_usd:,.4f}")


# -- series for the HTML report -------------------------------------------------------------------
def daily_series(conn, schema: str, days: float) -> list[dict]:
    """Per UTC day and model: cost, requests, cache hits, cache hit rate."""
    q = quote_ident(validate_schema_name(schema))
    rows = _rows(conn, f"""
        select (ts at time zone 'UTC')::date as day, coalesce(model, '?'),
               coalesce(sum(cost_usd), 0), count(*) filter (where not cached), count(*) filter (where cached)
        from {q}.llm_calls where ts >= now() - make_interval(secs => %s)
        group by 1, 2 order by 1, 2""", (_window(days),))
    return [{"day": day.isoformat(), "model": model, "cost_usd": float(cost), "requests": int(req),
             "cache_hits": int(hits), "cache_hit_rate": (hits / (hits + req)) if hits + req else None}
            for day, model, cost, req, hits in rows]


def error_kind_series(conn, schema: str, days: float) -> list[dict]:
    """Per UTC day and error kind: failed requests."""
    q = quote_ident(validate_schema_name(schema))
    rows = _rows(conn, f"""
        select (ts at time zone 'UTC')::date, error_kind, count(*)
        from {q}.llm_calls
        where ts >= now() - make_interval(secs => %s) and not cached and error_kind is not null
        group by 1, 2 order by 1, 2""", (_window(days),))
    return [{"day": day.isoformat(), "error_kind": kind, "errors": int(n)} for day, kind, n in rows]


def latency_samples(conn, schema: str, days: float, limit: int = 20_000) -> dict[str, list[float]]:
    """Request latencies per model (a random sample of at most ``limit`` in all)."""
    q = quote_ident(validate_schema_name(schema))
    rows = _rows(conn, f"""
        select coalesce(model, '?'), latency_ms from {q}.llm_calls
        where ts >= now() - make_interval(secs => %s) and not cached and latency_ms is not null
        order by random() limit %s""", (_window(days), int(limit)))
    out: dict[str, list[float]] = {}
    for model, ms in rows:
        out.setdefault(model, []).append(float(ms))
    return out


def top_nodes(conn, schema: str, days: float, limit: int = 10) -> list[dict]:
    """The dbt nodes that cost the most (paid requests), with what their cache hits saved."""
    q = quote_ident(validate_schema_name(schema))
    rows = _rows(conn, f"""
        select coalesce(nullif(node_id, ''), '(no node)'), coalesce(sum(cost_usd), 0),
               coalesce(sum(saved_cost_usd), 0), count(*) filter (where not cached)
        from {q}.llm_calls where ts >= now() - make_interval(secs => %s)
        group by 1 order by 2 desc, 1 limit %s""", (_window(days), int(limit)))
    return [{"node_id": node, "cost_usd": float(cost), "saved_cost_usd": float(saved), "requests": int(req)}
            for node, cost, saved, req in rows]


def settle_for_report(conn, schema: str, spool_dir: str | None = None) -> set[str]:
    """Before a report: the call records dead processes of this host left in their spool go to
    ``llm_calls``, and runs silent for long are marked crashed; both settle those runs' ``llm_runs``
    counters from ``llm_calls`` (run_totals.py). Returns the runs whose records were replayed."""
    from .migrations import ensure_migrated
    from .run_totals import replay_spools
    from .runs import mark_crashed_runs

    ensure_migrated(conn, schema)
    runs = replay_spools(conn, schema, spool_dir)
    mark_crashed_runs(conn, schema)
    return runs
