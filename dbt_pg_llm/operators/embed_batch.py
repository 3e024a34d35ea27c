"""Embeddings through a provider batch API: OpenAI's Batch API with ``/v1/embeddings`` lines.

Usage (``embed.embed_texts(..., mode='batch')`` calls it; no dbt import)::

    from dbt_pg_llm.operators.embed_batch import submit_embeddings
    report = submit_embeddings(connect, engine, "embedder", texts, dimensions=256, run=run)

The same flow as a chat column's batches (``pg/batch_fill.py`` / ``pg/batch_collect.py``): a run
first collects every finished batch (``BatchCollector.collect``: an embeddings batch, ``spec.kind
== 'embed'``, is handed to ``pg/batch_collect_embed.py``), then finds the texts with no vector in
``llm_embeddings`` and in no open batch, claims them (``pg.claims``), reserves each batch's worst
case at the batch price on the spend cap, commits the batch and its keys (``batch_store.record_intent``)
BEFORE the provider hears of it, submits, records the provider's id. A later run collects it:
vectors to the journal first, then ``llm_embeddings`` (binary COPY), then the keys are marked and
one ``llm_calls`` row per billed line is logged in one transaction (``batch_store.apply_answers``),
errored lines become dead letters and are submitted again by the next run.

One text per line: ``llm_batch_keys`` maps a line's ``custom_id`` to one key, and a batch is billed
per token, so packing inputs into a line would save nothing (OpenAI also caps a batch at 50,000
embedding inputs, the Batch API's line limit).
"""
from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from ..errors import ModelError, redact
from ..models.batch_api import BatchClient
from ..models.batch_api.openai_batches import OpenAIBatchClient
from ..models.batch_policy import BatchPolicy
from ..models.model_io import TokenUsage
from ..models.pricing import cost_usd
from ..models.spend import SpendLimit, active_limit
from ..pg import batch_store as store
from ..pg.batch_collect import BatchCollector
from ..pg.claims import ClaimHeartbeat, Claims, heartbeat_every, lease_seconds
from ..pg.migrations import ensure_migrated, quote_ident
from ..pg.spec import RunContext
from .embed import (MAX_INPUT_TOKENS, EmbedReport, embedding_config, embedding_fingerprint, keyed_texts, prepare_text,
                    present_keys)

__all__ = ["EMBEDDINGS_URL", "submit_embeddings", "in_open_batches"]

_log = logging.getLogger("dbt_pg_llm.embed")
EMBEDDINGS_URL = "/v1/embeddings"
def _tokens(text: str) -> int:
    return (len(text) + 3) // 4  # embed.py's estimate (the simulator's count): the worst case reserved


def submit_embeddings(connect: Callable[[], Any], engine, model_name: str, texts: Iterable[str | None], *,
                      dimensions: int | None = None, audit_schema: str = "llm_audit", run=None,
                      column_name: str | None = None, policy: BatchPolicy | dict | None = None,
                      max_cost_usd: float | None = None, spend_limit: SpendLimit | None = None,
                      claim_timeout_s: float = 60.0, max_input_tokens: int = MAX_INPUT_TOKENS,
                      truncate: bool = True, client: BatchClient | None = None) -> EmbedReport | None:
    """Collect finished batches, then submit the texts of ``texts`` that have no vector (and are in
    no open batch) as ``/v1/embeddings`` batch lines. Never raises for a row: see ``report.errors``.
    None when fewer than the policy's ``min_keys`` texts are missing: the caller embeds them now
    (``policy``: the model's ``batch:`` mapping; without one every missing text goes in a batch)."""
    config = embedding_config(engine, model_name)
    policy = BatchPolicy.from_dict(policy if policy is not None else {"enabled": True, "min_keys": 1})
    fp = embedding_fingerprint(config, dimensions)
    report = EmbedReport()
    by_key = keyed_texts(fp, texts)
    report.distinct_keys = len(by_key)
    run = run or RunContext(run_id=uuid.uuid4().hex)
    q = quote_ident(audit_schema)
    # finished batches (of any column) reach their tables first: what they answered is not missing
    with BatchCollector(connect, engine, audit_schema, run) as collector:
        collected = collector.collect()
    report.batch_problems = list(collected.problems)
    conn = connect()
    conn.autocommit = True
    try:
        ensure_migrated(conn, audit_schema)
        stored = present_keys(conn, audit_schema, list(by_key))
        report.cached = len(stored)
        missing = [k for k in by_key if k not in stored]
        queued = _in_open_batch(conn, q, missing)
        report.in_batch = len(queued)
        missing = [k for k in missing if k not in queued]
        if not missing:
            return report
        if len(missing) < policy.min_keys:  # a batch answers in hours: a few texts are embedded now
            return None
        claims = Claims(conn, lambda: conn, audit_schema, run, model_name, "embed",
                        SimpleNamespace(cache_hits=0, requests_total=0, saved_cost_usd=0.0), claim_timeout_s,
                        uuid.uuid4().hex, column_name=column_name)
        beat = ClaimHeartbeat(connect, q, claims.token, heartbeat_every(claim_timeout_s),
                              lease_s=lease_seconds(claim_timeout_s))
        beat.start()  # uploading a big batch can outlast claim_timeout_s
        own_client = client is None
        client = client or OpenAIBatchClient(config, model_name, endpoint_url=EMBEDDINGS_URL)
        try:
            mine = claims.claim(missing)  # the others are another run's: it submits or embeds them
            report.in_batch += len(missing) - len(mine)
            done = present_keys(conn, audit_schema, mine)
            lines = []
            for key in mine:
                if key in done:
                    continue
                text, why = prepare_text(by_key[key], max_input_tokens, truncate)
                if why:
                    report.errors[key] = why
                    continue
                report.truncated += text != by_key[key]
                body: dict[str, Any] = {"model": config.model_version, "input": [text], "encoding_format": "base64"}
                if dimensions:
                    body["dimensions"] = int(dimensions)
                lines.append((key, body))
            limit = spend_limit or (SpendLimit(max_cost_usd) if max_cost_usd else active_limit())
            for chunk in client.chunks(lines):
                _submit_one(conn, audit_schema, client, chunk, config, model_name, fp, dimensions, column_name,
                            policy, run, limit, report)
        finally:
            beat.stop()
            claims.release_all()  # submitted keys are in an open batch now: nobody requests them
            if own_client:
                client.close()
        return report
    finally:
        conn.close()


def in_open_batches(conn, q: str, model_name: str, keys: list[str]) -> set[str]:
    """The keys of ``keys`` in an open batch of ``model_name`` (paid for, or about to be): a normal
    fill leaves them to their batch. One cheap look when the model has no open batch."""
    with conn.cursor() as cur:
        cur.execute(f"select exists (select 1 from {q}.llm_batches where open and model = %s)", (model_name,))
        if not keys or not cur.fetchone()[0]:
            return set()
    return _in_open_batch(conn, q, keys)


def _in_open_batch(conn, q: str, keys: list[str]) -> set[str]:
    found: set[str] = set()
    with conn.cursor() as cur:
        for i in range(0, len(keys), 10_000):
            cur.execute(f"""select bk.key from {q}.llm_batch_keys bk join {q}.llm_batches b using (batch_uid)
                            where b.open and bk.state = 'pending' and bk.key = any(%s)""", (keys[i:i + 10_000],))
            found.update(k for (k,) in cur.fetchall())
    return found


def _submit_one(conn, schema: str, client: BatchClient, chunk, config, model_name: str, fp: str,
                dimensions: int | None, column_name: str | None, policy: BatchPolicy, run, limit,
                report: EmbedReport) -> None:
    """One provider batch: reserve its worst case, record the intent, create it, record its id."""
    tokens = sum(_tokens(body["input"][0]) for _, body, _ in chunk)
    worst = cost_usd(config, TokenUsage(tokens, 0)) * policy.discount
    reservation = limit.try_reserve(worst) if limit is not None else None
    if limit is not None and reservation is None:
        report.budget_skipped += len(chunk)
        for key, _, _ in chunk:
            report.errors[key] = "budget: llm.max_cost_usd_per_run reached; submitted on the next run"
        return
    uid = uuid.uuid4().hex
    store.record_intent(conn, schema, {
        "batch_uid": uid, "provider": client.provider, "model": model_name, "model_version": config.model_version,
        "fingerprint": fp, "spec": {"kind": "embed", "name": column_name, "dimensions": dimensions},
        "key_count": len(chunk), "discount": float(policy.discount), "run_id": getattr(run, "run_id", None),
        "node_id": getattr(run, "node_id", None)}, [(key, key) for key, _, _ in chunk])
    try:
        info = client.submit(uid, chunk)
    except ModelError as exc:
        # unconfirmed: it stays 'submitting' and the next collector finds it at the provider by its
        # tag, or frees its keys; its worst case stays reserved (it may have been created)
        if reservation is not None:
            reservation.settle(worst)
        report.batch_problems.append(f"batch {uid}: could not be confirmed ({redact(str(exc))}); the next run "
                                     "reconciles it")
        return
    store.record_submitted(conn, schema, uid, info.id, info.status)
    if reservation is not None:
        reservation.settle(worst)
    report.batched += len(chunk)
    report.batches.append(info.id)
