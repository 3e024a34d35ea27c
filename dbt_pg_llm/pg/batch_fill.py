"""The batch route of a fill: collect finished batches, submit big backfills, fill the rest normally.

``fill_column_batched`` wraps ``fill.fill_column`` (which it calls unchanged for whatever is left):

1. collect every finished batch of the audit schema into ``llm_results`` (``BatchCollector``),
   once per run and schema, so any run of any node picks up answers paid for earlier;
2. count the column's uncached keys that are not in an open batch; with a batch policy (profile
   ``batch:`` or ``mode='batch'``) and at least ``min_keys`` of them, *claim* them (``claims``: two
   concurrent runs never submit one key), drop those that meanwhile joined an open batch, and
   submit them in provider-sized batches: each batch is recorded (``record_intent``) BEFORE it
   is created at the provider, its claims released only then. With ``max_cost_usd``, a batch
   first reserves its worst case (``spend.estimate_cost`` x the batch discount, per key) from the
   run's spend limit and keeps it as spent (the provider bills it later); a batch that does not
   fit is not submitted, and its keys take the normal path, under the same cap;
3. wait up to ``max_wait_s`` for them, polling every ``poll_s`` with a progress line;
4. fill the rest through the normal path, with the keys of open batches left out of the source
   (they are paid for already: never requested twice); their rows stay NULL (or the on_error
   default) until a later run collects the batch.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ModelError, redact
from ..models.batch_api import BatchClient
from ..models.batch_policy import BATCH_PROVIDERS, BatchPolicy
from ..models.keys import key_sql
from ..models.spend import SpendLimit, estimate_cost
from . import batch_store as store
from .batch_collect import BatchCollector, CollectReport
from .budget import run_spend_limit
from .claims import ClaimHeartbeat, Claims, close_quietly, heartbeat_every
from .fill import fill_column
from .join import fresh_sql
from .migrations import ensure_migrated, quote_ident
from .report import FillReport
from .spec import ColumnSpec, RunContext
from .writers import ErrorRow, write_errors

__all__ = ["fill_column_batched", "BatchedFill", "collect_once"]

log = logging.getLogger("dbt_pg_llm")

_COLLECTED: set[tuple] = set()  # (run_id, schema) pairs whose open batches were collected
_COLLECTED_LOCK = threading.Lock()


@dataclass
class BatchedFill:
    """A fill's report plus what happened on the batch side."""

    report: FillReport
    submitted: list[str] = field(default_factory=list)  # provider ids of the batches submitted now
    collected: list[str] = field(default_factory=list)
    open_batches: list[str] = field(default_factory=list)  # this column's batches still open at the end
    pending_keys: int = 0  # keys of this column waiting in open batches (rows NULL for now)
    problems: list[str] = field(default_factory=list)


def collect_once(collector: BatchCollector) -> CollectReport | None:
    """Collect every open batch of the schema, the first time a run asks (later fills skip it)."""
    ident = (collector.run.run_id, collector.schema)
    with _COLLECTED_LOCK:
        if ident in _COLLECTED:
            return None
        _COLLECTED.add(ident)
    return collector.collect()


def fill_column_batched(connect: Callable[[], Any], engine, source_sql: str, spec: ColumnSpec | Mapping, *,
                        policy: BatchPolicy | None, audit_schema: str = "llm_audit", run: RunContext,
                        say: Callable[[str], None] | None = None, clients: dict[str, BatchClient] | None = None,
                        default_model: str | None = None, **fill_kwargs) -> BatchedFill:
    """``fill_column`` with the batch route (see the module docstring). ``policy`` None: no new
    batches, but finished ones are still collected and open ones never requested twice.
    ``fill_kwargs`` go to ``fill_column`` (on_error, cache_ttl_days, max_cost_usd, progress, ...)."""
    spec = ColumnSpec.from_dict(spec, default_model)
    with BatchCollector(connect, engine, audit_schema, run, cache_ttl_days=fill_kwargs.get("cache_ttl_days"),
                        clients=clients) as collector:
        return _fill(connect, engine, source_sql, spec, policy, audit_schema, run, say, collector, fill_kwargs)


def _fill(connect, engine, source_sql: str, spec: ColumnSpec, policy: BatchPolicy | None, audit_schema: str,
          run: RunContext, say, collector: BatchCollector, fill_kwargs: dict) -> BatchedFill:
    out = BatchedFill(report=FillReport(model=spec.model, node_id=run.node_id))
    first = collect_once(collector)
    if first is not None:
        out.collected += first.collected
        out.problems += first.problems
    model = engine.registry.get(spec.model)
    fingerprint = spec.fingerprint(model.config)
    key_expr = key_sql(fingerprint, spec.prompt_sql)
    conn = connect()
    conn.autocommit = True
    try:
        ensure_migrated(conn, audit_schema)
        todo = waiting = 0
        if policy is not None or _any_open(conn, audit_schema):  # else: the plain fill, no extra scan
            todo, waiting = _count(conn, audit_schema, source_sql, key_expr)
        if policy is not None and getattr(model.config, "provider", None) not in BATCH_PROVIDERS:
            out.problems.append(f"model '{spec.model}': mode='batch' needs a provider with a batch API "
                                f"({', '.join(BATCH_PROVIDERS)}); this column uses the normal path")
            policy = None
        if policy is not None and todo >= policy.min_keys:
            cap = fill_kwargs.get("max_cost_usd")
            limit = (run_spend_limit(conn, audit_schema, run.run_id, cap, continues=run.continues)
                     if cap is not None else None)
            mine = _Submitter(connect, engine, collector, spec, fingerprint, policy, audit_schema, run,
                              fill_kwargs.get("claim_timeout_s", 120.0), limit,
                              fill_kwargs.get("store_prompts", True)).submit(source_sql, out)
            if mine and policy.max_wait_s > 0:
                waited = collector.wait(mine, policy.max_wait_s, policy.poll_s, say)
                out.collected += waited.collected
                out.problems += waited.problems
            todo, waiting = _count(conn, audit_schema, source_sql, key_expr)
        elif policy is not None and todo:  # said once per column: otherwise batch mode looks ignored
            out.problems.append(f"mode='batch': {todo} uncached key(s) is fewer than batch.min_keys "
                                f"({policy.min_keys}) of model '{spec.model}': sent as normal requests now "
                                f"(set batch.min_keys <= {todo} to batch them)")
        filtered = source_sql
        if waiting:
            filtered = (f"(select * from {source_sql} __llm_b where {spec.prompt_sql} is null "
                        f"or not {store.in_open_batch_sql(audit_schema, key_expr)})")
        report = fill_column(connect, engine, filtered, spec, audit_schema=audit_schema, run=run, **fill_kwargs)
        open_rows = [r for r in store.open_batches(conn, audit_schema) if r.fingerprint == fingerprint]
    finally:
        conn.close()
    if waiting:  # the filtered source hid those keys' rows: count them back in
        report.distinct_keys += waiting
        report.rows = _rows(connect, source_sql)
    out.report = report
    out.pending_keys = waiting
    out.open_batches = [r.label for r in open_rows]
    return out


def _count(conn, schema: str, source_sql: str, key_expr: str) -> tuple[int, int]:
    """(uncached keys not in an open batch, uncached keys in an open batch). Embeds user SQL: no params."""
    q = quote_ident(schema)
    with conn.cursor() as cur:
        cur.execute(f"""
            with k as (select distinct {key_expr} as k from {source_sql} __llm_src),
                 m as (select k.k from k where k.k is not null and not exists (
                           select 1 from {q}.llm_results r where r.key = k.k and {fresh_sql('r')}))
            select count(*) filter (where not {store.in_open_batch_sql(schema, 'm.k')}),
                   count(*) filter (where {store.in_open_batch_sql(schema, 'm.k')}) from m""")
        todo, waiting = cur.fetchone()
    return int(todo), int(waiting)


def _any_open(conn, schema: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(f"select exists (select 1 from {quote_ident(schema)}.llm_batches where open)")
        return bool(cur.fetchone()[0])


def _rows(connect, source_sql: str) -> int:
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"select count(*) from {source_sql} __llm_src")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


class _Submitter:
    CLAIM_BATCH = 1000

    def __init__(self, connect, engine, collector: BatchCollector, spec: ColumnSpec, fingerprint: str,
                 policy: BatchPolicy, schema: str, run: RunContext, claim_timeout_s: float,
                 limit: SpendLimit | None = None, store_prompts: bool = True):
        self.connect, self.engine, self.collector = connect, engine, collector
        # llm.store_prompts: each claimed key's prompt, recorded with the batch's keys so that the
        # collector can keep it in llm_results as the normal path does
        self.prompts: dict[str, str] | None = {} if store_prompts else None
        self.limit = limit
        self.worst_case: dict[str, float] = {}  # per claimed key, at the batch price
        self.spec, self.fingerprint, self.policy, self.schema, self.run = spec, fingerprint, policy, schema, run
        self.claim_timeout_s = claim_timeout_s
        self.client = collector.client(spec.model)
        self.model = engine.model(spec.model)

    def submit(self, source_sql: str, out: BatchedFill) -> list[str]:
        """Claim and submit the column's uncached keys that no open batch holds; returns batch uids."""
        reader, writer = self.connect(), self.connect()
        reader.autocommit = writer.autocommit = True
        claims = Claims(reader, lambda: writer, self.schema, self.run, self.spec.model, self.spec.kind, out.report,
                        self.claim_timeout_s, uuid.uuid4().hex)
        # submitting a big batch (upload + create) can outlast claim_timeout_s: keep the claims alive
        heartbeat = ClaimHeartbeat(self.connect, claims.q, claims.token, heartbeat_every(self.claim_timeout_s),
                                   lease_s=claims.lease_s)
        heartbeat.start()
        uids: list[str] = []
        try:
            cursor = reader.cursor(name=f"llm_batch_{claims.token}", withhold=True)
            cursor.itersize = self.CLAIM_BATCH
            key_expr = key_sql(self.fingerprint, "d.p")
            cursor.execute(f"""
                select c.k, c.p from (select {key_expr} as k, d.p from (select distinct ({self.spec.prompt_sql})::text
                                      as p from {source_sql} __llm_src) d where d.p is not null) c
                where not exists (select 1 from {quote_ident(self.schema)}.llm_results r
                                  where r.key = c.k and {fresh_sql('r')})
                  and not {store.in_open_batch_sql(self.schema, 'c.k')}""")
            try:
                items = self._claimed(cursor, claims, writer)
                for chunk in self.client.chunks(items):
                    chunk = self._still_ours(claims, chunk)
                    if not chunk:
                        continue
                    uid = self._submit_chunk(writer, claims, chunk, out)
                    if uid is None:
                        break
                    uids.append(uid)
            finally:
                cursor.close()
        finally:
            heartbeat.stop()
            claims.release_all()
            close_quietly(reader, writer)
        return uids

    def _claimed(self, cursor, claims: Claims, writer):
        """(key, request body) of the keys this run claimed and no open batch holds (checked after
        claiming: a concurrent submitter records its batch before releasing its claims)."""
        while True:
            rows = cursor.fetchmany(self.CLAIM_BATCH)
            if not rows:
                return
            prompts = dict(rows)
            mine = claims.claim(list(prompts))
            if mine:
                with writer.cursor() as cur:
                    cur.execute(f"select bk.key from {quote_ident(self.schema)}.llm_batch_keys bk "
                                f"join {quote_ident(self.schema)}.llm_batches b on b.batch_uid = bk.batch_uid "
                                "where b.open and bk.key = any(%s::text[])", (mine,))
                    taken = {r[0] for r in cur.fetchall()}
                if taken:
                    claims.release(list(taken))
                for key in mine:
                    if key not in taken:
                        inp = self.spec.model_input(prompts[key])
                        if self.prompts is not None:
                            self.prompts[key] = prompts[key]
                        if self.limit is not None:
                            self.worst_case[key] = estimate_cost(self.model.config, inp) * self.policy.discount
                        yield key, self.client.request_body(inp)

    def _prompt(self, key: str) -> str | None:
        return self.prompts.pop(key, None) if self.prompts is not None else None

    def _still_ours(self, claims: Claims, chunk):
        """The rows of ``chunk`` whose claims are still ours, their lease renewed (decision 0022): a
        submitter paused past claim_timeout_s may have lost some to a run that requested them."""
        ours = set(claims.confirm([custom_id for custom_id, _, _ in chunk]))
        lost = [custom_id for custom_id, _, _ in chunk if custom_id not in ours]
        if lost:
            for key in lost:
                self.worst_case.pop(key, None)
                self._prompt(key)
            log.warning("claims on %d of %d key(s) of a batch of %s were taken over by another run while this "
                        "one was paused or cut off from Postgres: not submitting them, their answers come from "
                        "that run", len(lost), len(chunk), self.spec.model)
        return [row for row in chunk if row[0] in ours]

    def _submit_chunk(self, writer, claims: Claims, chunk, out: BatchedFill) -> str | None:
        uid = uuid.uuid4().hex[:24]
        keys = [custom_id for custom_id, _, _ in chunk]  # custom_id = the cache key
        reservation = None
        if self.limit is not None:
            reservation = self.limit.try_reserve(sum(self.worst_case.pop(k, 0.0) for k in keys))
            if reservation is None:  # not submitted: the normal path requests them, under the same cap
                claims.release(keys)
                log.warning("max_cost_usd %.4f: a batch of %d keys (%s) does not fit; not submitted",
                            self.limit.cap_usd, len(keys), self.spec.model)
                return None
        spec = {k: v for k, v in asdict(self.spec).items() if v not in (None, ())}
        store.record_intent(writer, self.schema, {
            "batch_uid": uid, "provider": self.client.provider, "model": self.spec.model,
            "model_version": self.model.config.model_version, "fingerprint": self.fingerprint, "spec": spec,
            "key_count": len(keys), "discount": float(self.policy.discount), "run_id": self.run.run_id,
            "node_id": self.run.node_id}, ((k, k, self._prompt(k)) for k in keys))
        claims.release(keys)  # the open batch row protects them from now on
        try:
            info = self.client.submit(uid, chunk)
        except ModelError as exc:
            created = self._failed(writer, uid, keys, exc, out)
            if reservation is not None:
                reservation.settle(reservation.amount if created else 0.0)
            return created
        if reservation is not None:
            reservation.keep()  # billed by the provider when the batch ends: its worst case stays spent
        store.record_submitted(writer, self.schema, uid, info.id, info.status)
        out.submitted.append(info.id)
        log.info("submitted batch %s (%s, %d keys)", info.id, self.spec.model, len(keys))
        return uid

    def _failed(self, writer, uid: str, keys: list[str], exc: ModelError, out: BatchedFill) -> str | None:
        """Creating the batch failed: maybe it exists anyway (the answer was lost); else free the keys."""
        try:
            info = self.client.find(uid, since=time.time() - 3600, count=len(keys), custom_ids=set(keys))
        except ModelError:
            info = None
        message = f"submitting a batch of {len(keys)} keys failed: {redact(str(exc))}"
        if info is not None:
            store.record_submitted(writer, self.schema, uid, info.id, info.status)
            out.submitted.append(info.id)
            return uid
        store.set_status(writer, self.schema, uid, "abandoned", open=False, message=message)
        write_errors(writer, self.schema, [ErrorRow(key=k, node_id=self.run.node_id, model=self.spec.model,
                                                    error_kind=str(exc.kind), message=message,
                                                    run_id=self.run.run_id, column_name=self.spec.name)
                                           for k in keys])
        out.problems.append(message)
        log.warning(message)
        return None
