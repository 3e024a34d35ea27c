"""The adapter side of ``pg_llm.embed`` columns (issue 19): resolve a spec, fill it, join it.

Kept out of impl.py (thin @available methods call these); the work is the engine's
``dbt_pg_llm.operators.embed`` / ``embed_columns``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional

from dbt.adapters.events.logging import AdapterLogger
from dbt_common.exceptions import CompilationError, DbtRuntimeError

logger = AdapterLogger("pg_llm")

__all__ = ["EMBED_SPEC_KEYS", "resolve_embed_column", "fill_embed_column", "estimate_embed_columns", "embed_join"]

EMBED_SPEC_KEYS = ("kind", "prompt_sql", "model", "dimensions", "name", "mode")


def resolve_embed_column(spec: Dict[str, Any], model_config: Callable[[str], Any], default_model: Optional[str],
                         name: Optional[str]) -> Dict[str, Any]:
    """{"name", "kind": "embed", "spec", "model", "dimensions", "dims", "fingerprint"}; CompilationError
    naming the key and the fix for a bad spec or a model that cannot embed (settings only, no database)."""
    from dbt_pg_llm.errors import ConfigError
    from dbt_pg_llm.models.config import check_keys
    from dbt_pg_llm.operators.embed import embedding_fingerprint
    from dbt_pg_llm.operators.embed_columns import column_dims

    path = f"columns.{name}" if name else "column"
    try:
        check_keys(dict(spec), EMBED_SPEC_KEYS, path)
    except ConfigError as exc:
        raise CompilationError(f"pg_llm: {exc}") from None
    text_sql = spec.get("prompt_sql")
    if not isinstance(text_sql, str) or not text_sql.strip():
        raise CompilationError(f"pg_llm: {path}: pg_llm.embed needs the SQL expression of the text to embed, "
                               "e.g. pg_llm.embed('title || \\' \\' || body')")
    model = spec.get("model") or default_model
    if not model:
        raise CompilationError(f"pg_llm: {path}.model: no embedding model; pass pg_llm.embed(..., model='<name>') "
                               "naming a model entry of the profile's llm block, e.g. one with model_version "
                               "text-embedding-3-small")
    dimensions = spec.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise CompilationError(f"pg_llm: {path}.dimensions: {dimensions!r} must be a positive whole number, e.g. 256")
    config = model_config(model)
    if getattr(config, "provider", None) == "anthropic":
        raise CompilationError(f"pg_llm: {path}.model: models.{model}.provider is 'anthropic', which has no "
                               "embeddings endpoint; use a model entry with provider openai or azure (OpenAI, Azure, "
                               "or an OpenAI-compatible server: vLLM, Ollama, llama.cpp)")
    if not hasattr(config, "model_version"):
        raise CompilationError(f"pg_llm: {path}.model: '{model}' is a strategy; embeddings need one model entry")
    mode = spec.get("mode")
    if mode not in (None, "batch", "normal"):
        raise CompilationError(f"pg_llm: {path}.mode: {mode!r} must be 'batch' (the provider's batch API, collected "
                               "by a later run) or 'normal'")
    policy = getattr(config, "batch", None)  # the model's batch: setting, switched by mode= (as text columns)
    policy = policy.for_column(mode) if policy is not None else None
    return {"name": name or spec.get("name"), "kind": "embed", "spec": dict(spec), "model": model,
            "batch": dataclasses.asdict(policy) if policy is not None else None,
            "dimensions": dimensions, "dims": column_dims(config, dimensions),
            "fingerprint": embedding_fingerprint(config, dimensions)}


def fill_embed_column(connect: Callable[[], Any], engine, source_sql: str, column: Dict[str, Any], *,
                      audit_schema: str, run, label: str, on_error: Any, max_cost_usd: Optional[float],
                      claim_timeout_s: float, say: Callable[[str], None], warn: Callable[[str], None]) -> Dict[str, Any]:
    """Embed the column's missing texts; log the summary; on_error 'fail' raises on a failed row."""
    from dbt_pg_llm.errors import PgLlmError, redact
    from dbt_pg_llm.operators.embed_columns import embed_relation

    started = time.monotonic()
    try:
        report = embed_relation(connect, engine, column["model"], source_sql, column["spec"]["prompt_sql"],
                                dimensions=column.get("dimensions"), audit_schema=audit_schema, run=run,
                                column_name=column.get("name"), max_cost_usd=max_cost_usd,
                                claim_timeout_s=claim_timeout_s, mode="batch" if column.get("batch") else None,
                                batch=column.get("batch"))
    except PgLlmError as exc:
        raise DbtRuntimeError(f"pg_llm: {label}: {redact(str(exc))}") from None
    except Exception as exc:  # database errors & co: name them, never leak a key
        raise DbtRuntimeError(f"pg_llm: {label}: embedding the column failed: {type(exc).__name__}: "
                              f"{redact(str(exc))}") from None
    say(f"{label}: {report.summary()} ({time.monotonic() - started:.2f}s)")
    if report.errors:
        first = redact(next(iter(report.errors.values())))
        text = (f"{label}: {len(report.errors)} of {report.distinct_keys} text(s) got no embedding; those rows are "
                f"NULL and are requested again on the next run. First error: {first}")
        if on_error == "fail":
            raise DbtRuntimeError(f"pg_llm: {text} (on_error='fail')")
        warn(text)
    return {"column": column.get("name"), "distinct": report.distinct_keys, "requests": report.requests,
            "errors": len(report.errors), "cost_usd": report.cost_usd}


def estimate_embed_columns(connect: Callable[[], Any], engine, settings, source_sql: str,
                           columns: List[Dict[str, Any]], node_id: Optional[str],
                           invocation_id: str) -> List[Dict[str, Any]]:
    """Estimate mode for embed columns: log each column's missing texts, requests, tokens and cost
    (added to the selection's running total, as chat columns are); requests nothing."""
    from dbt.adapters.pg_llm.operations import log_estimate
    from dbt_pg_llm.errors import PgLlmError, redact
    from dbt_pg_llm.operators.embed_columns import estimate_embed_column
    from dbt_pg_llm.pg.migrations import ensure_migrated

    out = []
    conn = connect()
    try:
        ensure_migrated(conn, settings.audit_schema)
        for column in columns:
            try:
                est = estimate_embed_column(conn, engine, column["model"], str(source_sql),
                                            column["spec"]["prompt_sql"], dimensions=column.get("dimensions"),
                                            audit_schema=settings.audit_schema, node_id=node_id,
                                            column=column.get("name"))
            except PgLlmError as exc:
                raise DbtRuntimeError(f"pg_llm: {redact(str(exc))}") from None
            except Exception as exc:  # e.g. the source relation does not exist yet: say so, go on
                conn.rollback()
                logger.warning(f"pg_llm estimate: {node_id or 'model'}.{column.get('name')}: cannot estimate "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); build its upstream "
                               "models first")
                continue
            out.append(log_estimate(settings, invocation_id, est))
    finally:
        conn.close()
    return out


def embed_join(conn_factory: Optional[Callable[[], Any]], inner_sql: str, columns: List[Dict[str, Any]],
               audit_schema: str) -> str:
    """The join adding each embed column (``vector(d)`` if the target database has pgvector, else
    ``real[]``; without ``conn_factory``, at parse time, real[])."""
    from dbt_pg_llm.operators.embed_columns import embed_join_sql, lookup_is_cheaper, vector_type

    triples = [(c["name"], c["fingerprint"], c["spec"]["prompt_sql"], c.get("dims")) for c in columns]
    vector, lookup = None, False
    if conn_factory is not None:
        conn = conn_factory()
        try:
            vector = vector_type(conn)
            lookup = lookup_is_cheaper(conn, inner_sql, triples, audit_schema)
        finally:
            conn.close()
    return embed_join_sql(inner_sql, triples, audit_schema, vector, lookup=lookup)
