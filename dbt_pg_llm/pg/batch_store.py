"""``llm_batches`` / ``llm_batch_keys``: what was sent to a provider batch API, and what came back.

The order that makes a kill harmless: ``record_intent`` commits the batch row (status
``submitting``, our ``batch_uid``) and its keys BEFORE the provider hears of the batch;
``record_submitted`` adds the provider's id after. A batch is ``open`` (its keys are not requested
again by anyone) until it is collected or abandoned. ``apply_answers`` moves keys from pending to
answered/failed and logs their ``llm_calls`` rows in ONE transaction, so a collector killed
half-way never logs (or bills) a key twice. All functions take an autocommit connection.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from .migrations import LOCK_CLASS, ensure_call_partitions, quote_ident, transaction
from .writers import CALL_COLUMNS, call_rows, copy_rows

__all__ = ["BatchRow", "BATCH_LOCK_CLASS", "in_open_batch_sql", "record_intent", "record_submitted", "set_status",
           "open_batches", "pending_keys", "key_prompts", "apply_answers", "close_batch", "try_lock", "unlock"]

BATCH_LOCK_CLASS = LOCK_CLASS + 1  # advisory locks held while collecting one batch
_COLUMNS = ("batch_uid", "provider", "model", "model_version", "fingerprint", "spec", "provider_batch_id", "status",
            "key_count", "answered", "failed", "cost_usd", "discount", "submitted_at", "completed_at", "run_id",
            "node_id", "submitter_pid")


@dataclass
class BatchRow:
    batch_uid: str
    provider: str
    model: str
    model_version: str | None
    fingerprint: str
    spec: dict
    provider_batch_id: str | None
    status: str
    key_count: int
    answered: int
    failed: int
    cost_usd: float
    discount: float
    submitted_at: datetime
    completed_at: datetime | None
    run_id: str | None
    node_id: str | None
    submitter_pid: int | None
    submitter_alive: bool = False

    @property
    def label(self) -> str:
        return f"{self.provider_batch_id or self.batch_uid} ({self.model}, {self.key_count} keys, {self.status})"


def in_open_batch_sql(schema: str, key_expr: str) -> str:
    """SQL condition: the key ``key_expr`` is in a batch still open (paid for, or about to be)."""
    q = quote_ident(schema)
    return (f"exists (select 1 from {q}.llm_batch_keys bk join {q}.llm_batches b on b.batch_uid = bk.batch_uid "
            f"where bk.key = {key_expr} and b.open)")


def record_intent(conn, schema: str, row: dict, keys: Iterable[tuple]) -> None:
    """Commit the batch row (status 'submitting') and its (custom_id, key[, prompt]) tuples, before
    submitting (the prompt, None unless llm.store_prompts, is what collect_prompts returns later)."""
    q = quote_ident(schema)
    with transaction(conn) as cur:
        cur.execute(f"""
            insert into {q}.llm_batches (batch_uid, provider, model, model_version, fingerprint, spec, status,
                                         key_count, discount, run_id, node_id, submitter_pid)
            values (%(batch_uid)s, %(provider)s, %(model)s, %(model_version)s, %(fingerprint)s, %(spec)s,
                    'submitting', %(key_count)s, %(discount)s, %(run_id)s, %(node_id)s, pg_backend_pid())""",
                    {**row, "spec": json.dumps(row["spec"], sort_keys=True)})
        copy_rows(cur, f"{q}.llm_batch_keys", ("batch_uid", "custom_id", "key", "prompt"),
                  ((row["batch_uid"], *k[:2], k[2] if len(k) > 2 else None) for k in keys))


def record_submitted(conn, schema: str, batch_uid: str, provider_batch_id: str, status: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"update {quote_ident(schema)}.llm_batches set provider_batch_id = %s, status = %s "
                    "where batch_uid = %s", (provider_batch_id, status, batch_uid))


def set_status(conn, schema: str, batch_uid: str, status: str, *, open: bool = True, message: str | None = None,
               ended: bool = False) -> None:
    with conn.cursor() as cur:
        cur.execute(f"""update {quote_ident(schema)}.llm_batches
                        set status = %s, open = %s, message = coalesce(%s, message),
                            completed_at = case when %s then coalesce(completed_at, now()) else completed_at end
                        where batch_uid = %s""", (status, open, message, ended, batch_uid))


def open_batches(conn, schema: str, *, models: Iterable[str] | None = None,
                 uids: Iterable[str] | None = None) -> list[BatchRow]:
    """Open batches (oldest first), optionally only of ``models`` / ``uids``; ``submitter_alive``
    tells whether the session that recorded the batch still exists."""
    q = quote_ident(schema)
    cols = ", ".join(f"b.{c}" for c in _COLUMNS)
    with conn.cursor() as cur:
        cur.execute(f"""
            select {cols}, exists (select 1 from pg_stat_activity a where a.pid = b.submitter_pid)
            from {q}.llm_batches b
            where b.open and (%s::text[] is null or b.model = any(%s::text[]))
              and (%s::text[] is null or b.batch_uid = any(%s::text[]))
            order by b.submitted_at""",
                    (*(2 * [list(models) if models is not None else None]),
                     *(2 * [list(uids) if uids is not None else None])))
        rows = cur.fetchall()
    out = []
    for r in rows:
        values = dict(zip(_COLUMNS, r[:-1]))
        values["cost_usd"] = float(values["cost_usd"] or 0)
        out.append(BatchRow(**values, submitter_alive=bool(r[-1])))
    return out


def pending_keys(conn, schema: str, batch_uid: str) -> dict[str, str]:
    """custom_id -> key of the batch's keys not yet answered or failed."""
    with conn.cursor() as cur:
        cur.execute(f"select custom_id, key from {quote_ident(schema)}.llm_batch_keys "
                    "where batch_uid = %s and state = 'pending'", (batch_uid,))
        return dict(cur.fetchall())


def key_prompts(conn, schema: str, batch_uid: str) -> dict[str, str]:
    """key -> prompt of the batch's pending keys recorded with their prompt (llm.store_prompts)."""
    with conn.cursor() as cur:
        cur.execute(f"select key, prompt from {quote_ident(schema)}.llm_batch_keys "
                    "where batch_uid = %s and state = 'pending' and prompt is not null", (batch_uid,))
        return dict(cur.fetchall())


def apply_answers(conn, schema: str, batch_uid: str, outcomes: list[tuple[str, object]], *, model: str,
                  operation: str, run_id: str, node_id: str | None,
                  column_name: str | None = None) -> list[tuple[str, object]]:
    """Mark keys answered/failed and log one ``llm_calls`` row per billed line, in one transaction.

    ``outcomes``: (custom_id, ModelOutput). Only keys still pending are applied (a second collector
    of the same batch changes nothing); returns the (custom_id, output) pairs applied now."""
    q = quote_ident(schema)
    by_id = dict(outcomes)
    ok = [c for c, o in outcomes if o.ok]
    bad = [c for c, o in outcomes if not o.ok]
    now = datetime.now(timezone.utc)
    with transaction(conn) as cur:
        pairs: list[tuple[str, str]] = []
        for state, ids in (("answered", ok), ("failed", bad)):
            if ids:
                cur.execute(f"""update {q}.llm_batch_keys set state = %s
                                where batch_uid = %s and custom_id = any(%s::text[]) and state = 'pending'
                                returning custom_id, key""", (state, batch_uid, ids))
                pairs.extend(cur.fetchall())
        rows = []
        for custom_id, key in pairs:
            out = by_id[custom_id]
            if not out.ok and not (out.cost_usd or out.tokens.prompt or out.tokens.completion):
                continue  # errored / expired / cancelled lines are not billed: a dead letter, not a request
            # one paid line = one llm_calls row, under the model that answered it and the column that asked
            rows.append({"ts": now, "run_id": run_id, "node_id": node_id, "column_name": column_name,
                         "model": model, "operation": operation, "input_hash": key, "attempt": 1,
                         "error_kind": None if out.ok else str(out.error_kind),
                         "error_message": None if out.ok else out.error_message,
                         "prompt_tokens": out.tokens.prompt, "completion_tokens": out.tokens.completion,
                         "latency_ms": 0.0, "cost_usd": out.cost_usd, "cached": False})
        if rows:
            ensure_call_partitions(cur, schema, [now])
            copy_rows(cur, f"{q}.llm_calls", CALL_COLUMNS, call_rows(rows))
        done = [by_id[c] for c, _ in pairs]
        cur.execute(f"""update {q}.llm_batches set answered = answered + %s, failed = failed + %s,
                            prompt_tokens = prompt_tokens + %s, completion_tokens = completion_tokens + %s,
                            cost_usd = cost_usd + %s where batch_uid = %s""",
                    (sum(o.ok for o in done), sum(not o.ok for o in done), sum(o.tokens.prompt for o in done),
                     sum(o.tokens.completion for o in done), sum(o.cost_usd for o in done), batch_uid))
    return [(key, by_id[c]) for c, key in pairs]


def close_batch(conn, schema: str, batch_uid: str, status: str) -> None:
    """The batch's results are all applied: it is no longer open."""
    with conn.cursor() as cur:
        cur.execute(f"""update {quote_ident(schema)}.llm_batches set status = %s, open = false,
                        collected_at = now(), completed_at = coalesce(completed_at, now())
                        where batch_uid = %s""", (status, batch_uid))


def try_lock(conn, batch_uid: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("select pg_try_advisory_lock(%s, hashtext(%s))", (BATCH_LOCK_CLASS, batch_uid))
        return bool(cur.fetchone()[0])


def unlock(conn, batch_uid: str) -> None:
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_unlock(%s, hashtext(%s))", (BATCH_LOCK_CLASS, batch_uid))
