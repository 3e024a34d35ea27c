"""LLM columns over pandas Series, for dbt Python models: the same keys, cache and audit as SQL.

``LlmFrameSession`` stages the distinct prompts of a Series in ``<audit>.llm_frame_prompts`` (COPY)
and runs exactly the fill of ``fill_column`` over them: same claims, same ``llm_results`` cache,
same ``llm_calls`` / ``llm_errors`` / ``llm_runs`` rows. The answers are then read back by key,
with the key computed in Python by ``keys.cache_key`` (the same value the SQL computes)::

    session = LlmFrameSession(connect, engine, "llm_audit", RunContext(run_id, node_id), "gpt")
    df["sentiment"] = session.classify(df["review"], ["positive", "negative", "neutral"])
    df["facts"] = session.extract(df["review"], {"type": "object", ...})
    df["summary"] = session.complete("Summarize: " + df["review"], max_tokens=60)

None / NaN prompts give None and make no request; non-text values are sent as ``str(value)``.
NUL characters are removed from prompts (Postgres text cannot hold them), in the key too.
pandas is imported only when a method is called.
"""
from __future__ import annotations

import math
import uuid
from typing import Any, Callable

from ..models.keys import cache_key
from ..pg.fill import ColumnFill
from ..pg.join import fresh_sql
from ..pg.migrations import ensure_migrated, quote_ident, transaction
from ..pg.report import FillReport
from ..pg.spec import ColumnSpec, RunContext
from ..pg.writers import copy_rows

__all__ = ["LlmFrameSession"]

_READ_CHUNK = 5000
_STAGING_MAX_AGE = "1 day"  # batches left behind by crashed sessions are removed after this


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover
        return False


class LlmFrameSession:
    """LLM columns for pandas Series. ``reports`` collects the FillReport of every call."""

    def __init__(self, connect: Callable[[], Any], engine, audit_schema: str = "llm_audit",
                 run: RunContext | None = None, default_model: str | None = None, *, on_error: str = "null",
                 cache_ttl_days: float | None = None, max_cost_usd: float | None = None,
                 progress: Callable[[dict], None] | None = None, window: int | None = None, chunk_rows: int = 500,
                 claim_timeout_s: float = 120.0, max_error_rate: float | None = None, store_prompts: bool = True):
        self.connect = connect
        self.engine = engine
        self.audit_schema = audit_schema
        self.run = run or RunContext(run_id=f"python-{uuid.uuid4().hex[:12]}")
        self.default_model = default_model
        self.options = dict(on_error=on_error, cache_ttl_days=cache_ttl_days, max_cost_usd=max_cost_usd,
                            progress=progress, window=window, chunk_rows=chunk_rows, claim_timeout_s=claim_timeout_s,
                            max_error_rate=max_error_rate, store_prompts=store_prompts)
        self.reports: list[FillReport] = []

    # -- public API -------------------------------------------------------------------------------
    # ``column``: the output column's name, recorded as llm_results.column_name (what
    # ``pg_llm.invalidate --args '{node: ..., column: ...}'`` matches); default: the input series' name.
    def complete(self, series, system: str | None = None, model: str | None = None,
                 max_tokens: int | None = None, temperature: float | None = None, column: str | None = None):
        """Free-text answers (str) aligned to ``series.index``."""
        return self._column(series, {"kind": "complete", "system": system, "model": model,
                                     "max_tokens": max_tokens, "temperature": temperature}, column)

    def classify(self, series, labels, instructions: str | None = None, model: str | None = None,
                 column: str | None = None):
        """One label of ``labels`` per prompt (str), aligned to ``series.index``."""
        return self._column(series, {"kind": "classify", "labels": list(labels) if labels is not None else None,
                                     "instructions": instructions, "model": model}, column)

    def extract(self, series, schema: dict, instructions: str | None = None, model: str | None = None,
                column: str | None = None):
        """Parsed JSON values (dict/list/...) matching ``schema``, aligned to ``series.index``."""
        return self._column(series, {"kind": "extract", "schema": schema, "instructions": instructions,
                                     "model": model}, column)

    def embed(self, series, model: str | None = None, dimensions: int | None = None, column: str | None = None):
        """Embedding vectors (lists of float; None for a missing or failed text), aligned to
        ``series.index``: the same keys and ``llm_embeddings`` cache as ``pg_llm.embed`` (operators/embed.py)."""
        import pandas as pd

        from .embed import embed as embed_texts_in_order

        name = column if column is not None else (str(series.name) if series.name is not None else None)
        texts = [None if _is_missing(v) else (v if isinstance(v, str) else str(v)).replace("\x00", "")
                 for v in series.tolist()]
        vectors = embed_texts_in_order(self.connect, self.engine, model or self.default_model, texts,
                                       dimensions=dimensions, audit_schema=self.audit_schema, run=self.run,
                                       column_name=name, max_cost_usd=self.options["max_cost_usd"],
                                       claim_timeout_s=self.options["claim_timeout_s"])
        return pd.Series(vectors, index=series.index, dtype=object, name=series.name)

    # -- internals --------------------------------------------------------------------------------
    def spec(self, spec_dict: dict, path: str = "column") -> ColumnSpec:
        """The checked spec (ConfigError naming ``path`` and the fix, before anything is requested)."""
        return ColumnSpec.from_dict({**spec_dict, "prompt_sql": "prompt"}, self.default_model, path=path)

    def _column(self, series, spec_dict: dict, column: str | None = None):
        import pandas as pd

        name = column if column is not None else (str(series.name) if series.name is not None else None)
        spec = self.spec({**spec_dict, "name": name or None},
                         path=f"session.llm.{spec_dict['kind']}({series.name or 'series'})")
        prompts = [None if _is_missing(v) else (v if isinstance(v, str) else str(v)).replace("\x00", "")
                   for v in series.tolist()]
        distinct = list(dict.fromkeys(p for p in prompts if p is not None))
        answers = self.fill_prompts(spec, distinct, rows=len(prompts)) if distinct else {}
        return pd.Series([answers.get(p) if p is not None else None for p in prompts],
                         index=series.index, name=series.name, dtype=object)

    def fill_prompts(self, spec: ColumnSpec, prompts: list[str], rows: int | None = None) -> dict[str, Any]:
        """Fill ``prompts`` (distinct, non-null text) through fill_column's path; return
        {prompt: answer} for those that have one (failed keys are absent)."""
        q = quote_ident(self.audit_schema)
        batch_id = uuid.uuid4().hex
        conn = self.connect()
        conn.autocommit = True
        try:
            ensure_migrated(conn, self.audit_schema)
            with transaction(conn) as cur:
                cur.execute(f"delete from {q}.llm_frame_prompts where created_at < now() - interval "
                            f"'{_STAGING_MAX_AGE}'")
                copy_rows(cur, f"{q}.llm_frame_prompts", ("batch_id", "prompt"), ((batch_id, p) for p in prompts))
            try:
                fill = ColumnFill(self.connect, self.engine, spec, audit_schema=self.audit_schema, run=self.run,
                                  wait_timeout_s=900.0, **self.options)
                source = f"(select prompt from {q}.llm_frame_prompts where batch_id = '{batch_id}')"
                try:
                    fill.run(source, rows_hint=rows)
                finally:
                    self.reports.append(fill.report)
            finally:
                with conn.cursor() as cur:
                    cur.execute(f"delete from {q}.llm_frame_prompts where batch_id = %s", (batch_id,))
            return self._read_answers(conn, spec, fill.fingerprint, prompts)
        finally:
            conn.close()

    def _read_answers(self, conn, spec: ColumnSpec, fingerprint: str, prompts: list[str]) -> dict[str, Any]:
        q = quote_ident(self.audit_schema)
        by_key = {cache_key(fingerprint, p): p for p in prompts}
        keys = list(by_key)
        answers: dict[str, Any] = {}
        with conn.cursor() as cur:
            for i in range(0, len(keys), _READ_CHUNK):
                cur.execute(f"select r.key, r.{spec.output_column} from {q}.llm_results r "
                            f"where r.key = any(%s::text[]) and {fresh_sql('r')}", (keys[i:i + _READ_CHUNK],))
                for key, value in cur.fetchall():
                    answers[by_key[key]] = value
        return answers
