"""Collect finished provider batches into ``llm_results``; reconcile unconfirmed ones; cancel.

Every run that fills a column (any node, any machine) first calls ``BatchCollector.collect``:
for each open batch of the audit schema (under a per-batch advisory lock, so two collectors never
work on one batch):

1. no provider id yet (the submitter died between creating the batch and recording its id, or is
   creating it right now): once its session is gone (or ``RECONCILE_AFTER_S`` passed), the
   provider's batch list is searched for our idempotency id; found -> recorded, else the batch
   never reached the provider -> ``abandoned`` (its keys are free again);
2. ask the provider for the batch's status; not ended -> it stays open;
3. ended: download the results, turn each line into a ModelOutput at the batch price, **journal
   the answers in the engine's cache (diskcache) first**, then upsert ``llm_results``, mark the keys
   and log ``llm_calls`` in one transaction (``batch_store.apply_answers``), dead-letter failures
   (``llm_errors``; requests without a result line fail with the batch's status: expired, cancelled,
   failed), add the run's counts to ``llm_runs``, close the batch. A failed key is no longer in an
   open batch, so the next fill requests it again (batch or normal, per the settings).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from ..errors import ModelError, PgLlmError, redact
from ..models.batch_api import BatchClient, client_for, missing_line, output_of_line
from ..models.model_io import ModelOutput
from . import batch_store as store
from .batch_collect_embed import collect_embed_batch, is_embed_batch
from .migrations import ensure_migrated, quote_ident
from .spec import ColumnSpec, RunContext
from .writers import ErrorRow, ResultRow, record_run, resolve_errors, write_errors, write_results

__all__ = ["BatchCollector", "CollectReport", "RECONCILE_AFTER_S"]

log = logging.getLogger("dbt_pg_llm")

RECONCILE_AFTER_S = 600.0  # a live submitter gets this long to record the id of the batch it created
@dataclass
class CollectReport:
    collected: list[str] = field(default_factory=list)  # labels of the batches closed now
    answered: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    still_open: list[store.BatchRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class BatchCollector:
    def __init__(self, connect: Callable, engine, schema: str, run: RunContext, *,
                 cache_ttl_days: float | None = None, clients: dict[str, BatchClient] | None = None):
        self.connect = connect
        self.engine = engine
        self.schema = schema
        self.run = run
        self.ttl = timedelta(days=cache_ttl_days) if cache_ttl_days else None
        self.clients = clients if clients is not None else {}
        self._own_clients = clients is None  # close only the HTTP clients made here

    def close(self) -> None:
        if self._own_clients:
            for client in self.clients.values():
                client.close()
            self.clients.clear()

    def __enter__(self) -> "BatchCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def client(self, model_name: str) -> BatchClient:
        client = self.clients.get(model_name)
        if client is None:
            model = self.engine.model(model_name)
            client = self.clients[model_name] = client_for(model.config, model_name)
        return client

    def _open(self):
        conn = self.connect()
        conn.autocommit = True
        ensure_migrated(conn, self.schema)
        return conn

    # -- collecting -------------------------------------------------------------------------------
    def collect(self, *, uids=None) -> CollectReport:
        rep = CollectReport()
        conn = self._open()
        try:
            for row in store.open_batches(conn, self.schema, uids=uids):
                self._collect_one(conn, row, rep)
        finally:
            conn.close()
        return rep

    def _collect_one(self, conn, row: store.BatchRow, rep: CollectReport) -> None:
        if row.model not in {m.name for m in self.engine.registry}:
            rep.still_open.append(row)  # its model is not configured here: another project's batch
            return
        if not store.try_lock(conn, row.batch_uid):
            rep.still_open.append(row)  # another run is collecting it right now
            return
        try:
            client = self.client(row.model)
            if row.provider_batch_id is None and not self._reconcile(conn, row, client, rep):
                return
            info = client.retrieve(row.provider_batch_id)
            if info.status != row.status:
                store.set_status(conn, self.schema, row.batch_uid, info.status, ended=info.ended)
                row.status = info.status
            if not info.ended:
                rep.still_open.append(row)
                return
            self._apply(conn, row, client, info, rep)
        except (ModelError, OSError) as exc:
            message = f"batch {row.label}: could not collect it now ({redact(str(exc))}); it stays open"
            log.warning(message)
            rep.problems.append(message)
            rep.still_open.append(row)
        finally:
            store.unlock(conn, row.batch_uid)

    def _reconcile(self, conn, row: store.BatchRow, client: BatchClient, rep: CollectReport) -> bool:
        """A batch recorded but never confirmed: find it at the provider, or free its keys."""
        age = (datetime.now(timezone.utc) - row.submitted_at).total_seconds()
        if row.submitter_alive and age < RECONCILE_AFTER_S:
            rep.still_open.append(row)  # its submitter is probably creating it right now
            return False
        keys = store.pending_keys(conn, self.schema, row.batch_uid)
        with conn.cursor() as cur:
            cur.execute(f"select provider_batch_id from {quote_ident(self.schema)}.llm_batches "
                        "where provider_batch_id is not null")
            known = {r[0] for r in cur.fetchall()}
        info = client.find(row.batch_uid, since=row.submitted_at.timestamp() - 300, count=row.key_count,
                           custom_ids=set(keys), known_ids=known)
        if info is None:
            store.set_status(conn, self.schema, row.batch_uid, "abandoned", open=False,
                             message="never reached the provider (its submitter stopped before creating it)")
            log.warning("batch %s never reached the provider; its %d keys are free again", row.batch_uid, row.key_count)
            return False
        store.record_submitted(conn, self.schema, row.batch_uid, info.id, info.status)
        row.provider_batch_id, row.status = info.id, info.status
        log.warning("batch %s: found at the provider as %s (its submitter stopped before recording it)",
                    row.batch_uid, info.id)
        return True

    def _apply(self, conn, row: store.BatchRow, client: BatchClient, info, rep: CollectReport) -> None:
        if is_embed_batch(row.spec):  # /v1/embeddings lines: vectors go to llm_embeddings, not llm_results
            collect_embed_batch(self.engine, conn, self.schema, self.run, row, client, info, rep)
            return
        model = self.engine.model(row.model)
        spec = ColumnSpec.from_dict(row.spec)
        inp = spec.model_input("")
        pending = store.pending_keys(conn, self.schema, row.batch_uid)
        outcomes: list[tuple[str, ModelOutput]] = []
        for line in client.results(info):
            if line.custom_id in pending:
                outcomes.append((line.custom_id, output_of_line(line, model, inp, row.discount)))
        seen = {c for c, _ in outcomes}
        outcomes += [(c, missing_line(info.status, info.id, row.model)) for c in pending.keys() - seen]
        cache = getattr(self.engine, "cache", None)
        if cache is not None:  # journal first: paid answers survive whatever happens below
            cache.put_many((pending[c], o) for c, o in outcomes)
        prompts = store.key_prompts(conn, self.schema, row.batch_uid)
        write_results(conn, self.schema, [self._result_row(pending[c], o, row, spec, prompts.get(pending[c]))
                                          for c, o in outcomes if o.ok])
        # the lines are the submitting run's spend (it reserved their worst case from its cap when it
        # submitted them): logged under it, not under whichever run -- of whichever model -- collects
        payer = row.run_id or self.run.run_id
        applied = store.apply_answers(conn, self.schema, row.batch_uid, outcomes, model=row.model,
                                      operation=spec.kind, run_id=payer, node_id=row.node_id,
                                      column_name=spec.name)
        ok_keys = [k for k, o in applied if o.ok]
        errors = [ErrorRow(key=k, node_id=row.node_id, model=row.model, error_kind=str(o.error_kind),
                           message=o.error_message, run_id=self.run.run_id, column_name=spec.name)
                  for k, o in applied if not o.ok]
        resolve_errors(conn, self.schema, ok_keys)
        write_errors(conn, self.schema, errors)
        paid = sum(o.cost_usd for _, o in applied)
        record_run(conn, self.schema, self.run.run_id, target=self.run.target, ended=False, errors=len(errors))
        if payer != self.run.run_id:
            record_run(conn, self.schema, payer, ended=False)  # its totals, derived again from llm_calls
        store.close_batch(conn, self.schema, row.batch_uid, info.status)
        rep.collected.append(f"{info.id} ({row.model}, {len(ok_keys)} answered, {len(errors)} failed, "
                             f"{info.status})")
        rep.answered += len(ok_keys)
        rep.failed += len(errors)
        rep.cost_usd += paid

    def _result_row(self, key: str, output: ModelOutput, row: store.BatchRow, spec: ColumnSpec,
                    prompt: str | None = None) -> ResultRow:
        return ResultRow.of_answer(key, output, is_json=spec.is_json, model=row.model,
                                   model_version=row.model_version, fingerprint=row.fingerprint,
                                   cost_usd=output.cost_usd, ttl=self.ttl, run_id=self.run.run_id,
                                   node_id=row.node_id, column_name=spec.name,
                                   prompt=prompt)  # prompt: recorded at submit

    # -- operations -------------------------------------------------------------------------------
    def cancel(self) -> list[str]:
        """Ask the provider to cancel every open batch of a configured model; returns their labels.
        The cancelled batches are collected (answers so far kept, the rest dead-lettered) once ended."""
        done = []
        conn = self._open()
        try:
            for row in store.open_batches(conn, self.schema):
                if row.model not in {m.name for m in self.engine.registry}:
                    continue
                client = self.client(row.model)
                if row.provider_batch_id is None:
                    if not self._reconcile(conn, row, client, CollectReport()):
                        continue
                try:
                    info = client.cancel(row.provider_batch_id)
                except ModelError as exc:
                    raise PgLlmError(f"could not cancel batch {row.label}: {redact(str(exc))}") from None
                store.set_status(conn, self.schema, row.batch_uid, info.status, ended=info.ended)
                done.append(f"{info.id} ({row.model}, {row.key_count} keys): {info.status}")
        finally:
            conn.close()
        return done

    def wait(self, uids: list[str], max_wait_s: float, poll_s: float,
             say: Callable[[str], None] | None = None) -> CollectReport:
        """Poll ``uids`` until all are collected or ``max_wait_s`` passed; one progress line per poll."""
        started = time.monotonic()
        total = CollectReport()
        open_uids = list(uids)
        while open_uids:
            left = max_wait_s - (time.monotonic() - started)
            if left <= 0:
                break
            time.sleep(min(poll_s, left))
            rep = self.collect(uids=open_uids)
            total.collected += rep.collected
            total.answered += rep.answered
            total.failed += rep.failed
            total.cost_usd += rep.cost_usd
            total.problems += rep.problems
            open_uids = [r.batch_uid for r in rep.still_open]
            if say is not None:
                say(f"{len(uids) - len(open_uids)} of {len(uids)} batch(es) collected, {total.answered} keys "
                    f"answered, {total.failed} failed, ${total.cost_usd:.4f}; waited "
                    f"{time.monotonic() - started:.0f}s of {max_wait_s:.0f}s")
        return total
