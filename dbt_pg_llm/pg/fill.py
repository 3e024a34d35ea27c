"""Fill a column with LLM output, paying once per distinct key: the algorithm behind ``llm_enrich``.

The model's SQL is a plain join of its source to ``<audit>.llm_results`` on the per-row key
(``join.join_sql``). Before that SQL runs, ``fill_column`` makes sure every key the join needs is
in ``llm_results``:

1. migrate the audit schema (once per process, database and schema);
2. one statement counts rows and distinct keys, and logs the keys already cached as
   ``llm_calls`` rows with ``cached = true`` and ``saved_cost_usd`` = the stored cost;
3. a server-side cursor streams the distinct ``(key, prompt)`` pairs not in ``llm_results``
   (valid and unexpired); each batch is *claimed* in ``llm_claims`` (``claims``) so concurrent
   runs never pay twice for a key; keys claimed by someone else are set aside;
4. claimed keys stream through ``engine.map_unordered`` (bounded in flight; ``engine.map_packed``
   when the column's or model's ``batch_size`` > 1 packs that many per request); answers are written
   with COPY in chunks as they arrive, on our own autocommit connection, so everything paid
   before a later failure is kept (and the engine journals every paid answer before returning);
   failures become dead letters in ``llm_errors``; successes resolve old dead letters;
5. keys set aside are waited for (polling ``llm_results``; the progress names who holds them) and
   taken over if their claimer died (its lease ended and its session is gone or its heartbeat is
   older than ``claim_timeout_s``; claims.py); requests go out only under the fill's lease, and a key
   another run took over meanwhile is waited for, not sent (lease.py, decision 0022); the engine's
   call logs go to ``llm_calls``; the invocation's counts are
   added to ``llm_runs``.

``on_error``: "fail" stops submitting at the first failed key, writes what was paid and raises
ModelError; anything else ("null", "default") dead-letters failures and carries on (the join
then gives NULL, or the column's default). ``max_cost_usd`` is a hard cap shared by the fills of
one run (``budget.run_spend_limit``, a ``spend.SpendLimit``): every request reserves its worst case
before it is sent; once one does not fit, the fill stops submitting and every key left is a
dead letter of kind ``budget`` (NULL now, requested on the next run), counted in
``FillReport.budget_skipped``. Whether that fails the model is the caller's choice (``on_budget``).

User SQL (the source SQL and the prompt SQL) may contain ``%`` (``LIKE '%x%'``, modulo), which
psycopg2 reads as a placeholder whenever parameters are passed. Rule: a statement that embeds
user SQL is executed WITHOUT parameters; its few values are inlined with ``quote_literal``.

Here: ``fill_column`` and its ``ColumnFill`` (also driven by ``frame.LlmFrameSession``): counting,
requesting, writing, progress and the final report.
"""
from __future__ import annotations

import functools
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import ErrorKind, PgLlmError, redact
from ..models.model_io import ModelInput
from .budget import run_spend_limit
from .cache_control import forget_invalidated
from .call_logs import CallLogDrain
from .cascades import prepare_strategy
from .claims import ClaimHeartbeat, Claims, close_quietly, heartbeat_every, lease_seconds, send_lease
from .connectivity import buffered_sinks, db_errors
from .join import count_and_log_hits_sql, uncached_prompts_sql
from .migrations import ensure_call_partitions, ensure_migrated, quote_ident
from .outcome import connection_broke, error_rate_exceeded, first_error_fails, too_many_errors, where_kept
from .progress import FillProgress
from .report import FillError, FillReport
from .run_totals import replay_spools, run_totals, spool_dir_of
from .runs import run_heartbeat, run_started
from .spec import ColumnSpec, RunContext, check_fill_settings
from .waiting import ClaimWaiter
from .writers import ErrorRow, ResultRow, record_run, resolve_errors, write_calls, write_errors, write_results

__all__ = ["fill_column", "ColumnFill"]

log = logging.getLogger("dbt_pg_llm")

FLUSH_EVERY_S = 2.0  # answers reach llm_results (and claims are released) at least this often
RUN_HEARTBEAT_EVERY_S = 10.0


# -- the fill --------------------------------------------------------------------------------------
def fill_column(connect: Callable[[], Any], engine, source_sql: str, spec: ColumnSpec | Mapping, *,
                audit_schema: str = "llm_audit", run: RunContext, on_error: str = "null",
                cache_ttl_days: float | None = None, max_cost_usd: float | None = None,
                progress: Callable[[dict], None] | None = None, window: int | None = None, chunk_rows: int = 500,
                claim_timeout_s: float = 120.0, wait_timeout_s: float = 900.0,
                default_model: str | None = None, max_error_rate: float | None = None,
                store_prompts: bool = True) -> FillReport:
    """Make sure ``llm_results`` holds an answer for every distinct non-NULL prompt of ``source_sql``.

    ``connect()`` must return a NEW psycopg2 connection (two are opened: a reader holding the
    candidate cursor and the claims, and an autocommit writer); they are closed at the end.
    ``source_sql``: a relation (``"analytics"."reviews"``) or a parenthesized subquery.
    Each answer is stored with its provenance: node, column (``spec.name``), model, model_version,
    fingerprint, run id and, unless ``store_prompts`` is False, the prompt text.
    Returns a FillReport; with ``on_error="fail"`` raises ModelError after writing what was paid,
    as it does when more than ``max_error_rate`` (0..1) of the distinct keys failed or were skipped.
    """
    spec = ColumnSpec.from_dict(spec, default_model)
    return ColumnFill(connect, engine, spec, audit_schema=audit_schema, run=run, on_error=on_error,
                      cache_ttl_days=cache_ttl_days, max_cost_usd=max_cost_usd, progress=progress, window=window,
                      chunk_rows=chunk_rows, claim_timeout_s=claim_timeout_s,
                      wait_timeout_s=wait_timeout_s, max_error_rate=max_error_rate,
                      store_prompts=store_prompts).run(source_sql)


class ColumnFill:
    """One fill of one column (``fill_column``; ``frame.LlmFrameSession`` drives it too): ``run()``
    once, then read ``report``."""

    def __init__(self, connect, engine, spec: ColumnSpec, *, audit_schema, run, on_error, cache_ttl_days,
                 max_cost_usd, progress, window, chunk_rows, claim_timeout_s, wait_timeout_s, poll_s=0.25,
                 max_error_rate: float | None = None, store_prompts: bool = True):
        check_fill_settings(run, window, chunk_rows, max_cost_usd, cache_ttl_days, claim_timeout_s, max_error_rate)
        self.max_error_rate = max_error_rate
        self.store_prompts = bool(store_prompts)  # False: llm_results keeps the key (a hash) only
        self._prompts: dict[str, str] = {}
        self.connect = connect
        self.engine = engine
        self.spec = spec
        self.schema = audit_schema
        self.q = quote_ident(audit_schema)
        self.run_ctx = run
        self.fail_fast = on_error == "fail"
        self.ttl = timedelta(days=cache_ttl_days) if cache_ttl_days else None
        self.max_cost = max_cost_usd
        self.chunk_rows = chunk_rows
        self.claim_timeout_s = claim_timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        # requests for our claimed keys go out only while the heartbeat keeps our lease (lease.py)
        self.lease = send_lease(claim_timeout_s)
        self.heartbeat = ClaimHeartbeat(connect, self.q, self.token, heartbeat_every(claim_timeout_s),
                                        lease=self.lease, lease_s=lease_seconds(claim_timeout_s))
        self._dropped: list[str] = []  # keys whose request the lease dropped: their claims to release
        self.claims: Claims | None = None  # once the reader connection (which holds them) is open
        # column_name: every llm_calls row says which column asked (its totals are derived from them)
        self.context = run.as_context(operation=spec.kind, column_name=spec.name)
        model = engine.registry.get(spec.model)  # RegistryError (listing known models) if unknown
        self.model_config = model.config
        # Calls in flight plus answers waiting for the consumer: 4x the model's concurrency, so the
        # pool stays full while this thread claims keys and COPYs answers (a fixed 256 capped a
        # max_concurrency of 256 well below it: the answers being written hold window places).
        # The window counts rows: packed, a request holds batch_size of them (16 rows per request
        # in 256 kept 16 of 64 slots busy).
        self.batch_size = spec.batch_size or getattr(model.config, "batch_size", 1)
        self.window = window or max(256, 4 * model.config.max_concurrency) * self.batch_size
        self.claim_batch = max(self.window, 64)
        self.fingerprint = spec.fingerprint(self.model_config)
        self.report = FillReport(model=spec.model, node_id=run.node_id)
        self.call_logs = CallLogDrain(buffered_sinks(engine))
        self.reader = self.writer = None
        self.progress = FillProgress(progress, self.report, self.context, self._budget_spent)
        self.last_flush = time.monotonic()
        self.listed_at = time.time()  # when the uncached keys were listed (set again when they are)
        self.waiting: dict[str, str] = {}
        self._results: list[ResultRow] = []
        self._ok_keys: list[str] = []
        self._errors: list[ErrorRow] = []
        self._done_keys: list[str] = []
        self._versions: dict[str, str | None] = {}
        self.spend_limit = None  # the run's SpendLimit when max_cost_usd is set
        self.engine_hits = 0
        self.answers_written = 0
        self._salvaged = False  # a failed write already said where the answers are
        self.run_open = False  # our llm_runs row says running (run_started) and must be closed
        self.last_run_heartbeat = time.monotonic()

    # -- connections ------------------------------------------------------------------------------
    def _open(self):
        conn = self.connect()
        conn.autocommit = True
        return conn

    def _write(self, fn, *args, **kwargs):
        """Run a writer on the writer connection; reconnect and retry once if the connection broke."""
        try:
            return fn(self.writer, self.schema, *args, **kwargs)
        except db_errors() as exc:
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
            run_started(self.writer, self.schema, self.run_ctx.run_id, target=self.run_ctx.target)
            replay_spools(self.writer, self.schema, spool_dir_of(self.engine))  # dead runs' unlogged requests
            self.run_open = True
            self.reader = self._open()
            self.claims = Claims(self.reader, lambda: self.writer, self.schema, self.run_ctx, self.spec.model,
                                 self.spec.kind, self.report, self.claim_timeout_s, self.token, lease=self.lease,
                                 column_name=self.spec.name)
            self._count_attempts(True)
            self.heartbeat.start()
            if self.max_cost is not None:
                self.spend_limit = run_spend_limit(self.writer, self.schema, self.run_ctx.run_id, self.max_cost,
                                                   continues=self.run_ctx.continues)
                self.report.budget_cap_usd = float(self.max_cost)
            # a guaranteed cascade chooses its thresholds on a sample first (or reuses them), a route
            # takes its scores from llm_evaluations (decision 0033); the sample is the run's, under its cap
            prepare_strategy(self.writer, self.schema, self.engine, self.spec, source_sql, context=self.context,
                             spend_limit=self.spend_limit)
            self._count_and_log_hits(source_sql)
            if rows_hint is not None:
                rep.rows = rows_hint
            self.progress.emit(force=True)
            cursor = self.reader.cursor(name=f"llm_fill_{self.token}", withhold=True)
            cursor.itersize = self.claim_batch
            cursor.execute(uncached_prompts_sql(source_sql, self.spec, self.fingerprint, self.schema))
            self.listed_at = time.time()  # the local clock at (just after) the statement's now()
            try:
                self._request(self._claimed_inputs(cursor))
                if rep.stopped == "max_cost":
                    self._fail_unrequested(cursor)
            finally:
                try:
                    cursor.close()
                except Exception:
                    pass
            self._wait_for_others()
            self._flush(final=True)
        except BaseException as exc:
            self._salvage()
            self._record_failed_run()
            if isinstance(exc, db_errors()):  # say what became of the paid answers, not just the driver error
                raise connection_broke(exc, self.spec.model, self.schema, self.engine,
                                       [r.key for r in self._results]) from exc
            raise
        finally:
            self._count_attempts(False)
            self._close()
        self._finish()
        return rep

    def _count_attempts(self, on: bool) -> None:
        """Add (remove) this fill's retry / 429 counter to the engine's log dispatcher."""
        dispatcher = getattr(self.engine, "log", None)
        if on and callable(getattr(dispatcher, "add", None)):
            dispatcher.add(self.progress.attempts)
        elif not on and callable(getattr(dispatcher, "remove", None)):
            dispatcher.remove(self.progress.attempts)

    def _count_and_log_hits(self, source_sql: str) -> None:
        """Rows, distinct keys, and the cached keys logged as cached llm_calls rows (one statement)."""
        rep = self.report
        with self.writer.cursor() as cur:
            ensure_call_partitions(cur, self.schema, [datetime.now(timezone.utc)])
            cur.execute(count_and_log_hits_sql(source_sql, self.spec, self.fingerprint, self.schema,
                                               self.run_ctx.run_id, self.run_ctx.node_id))
            rows, distinct, hits, saved = cur.fetchone()
        rep.rows, rep.distinct_keys, rep.cache_hits, rep.saved_cost_usd = int(rows), int(distinct), int(hits), float(saved)
        rep.requests_total = rep.distinct_keys - rep.cache_hits

    # -- requesting -------------------------------------------------------------------------------
    def _claimed_inputs(self, cursor) -> Iterator[tuple[str, ModelInput]]:
        spec = self.spec
        while not self.report.stopped:
            batch = cursor.fetchmany(self.claim_batch)
            if not batch:
                return
            self._forget_invalidated(batch)
            prompts = {row[0]: row[1] for row in batch}
            mine = self.claims.claim(list(prompts))
            mine_set = set(mine)
            for key in prompts:
                if key not in mine_set:
                    self.waiting[key] = prompts[key]
            self.report.waiting_keys = len(self.waiting)
            for i, key in enumerate(mine):
                if self.report.stopped:
                    rest = mine[i:]
                    self.claims.release(rest)
                    if self.report.stopped == "max_cost":
                        self._skip_for_budget(rest)
                    return
                self.progress.submitted()
                yield key, spec.model_input(prompts[key])

    def _forget_invalidated(self, batch) -> None:
        """Before any key of ``batch`` is requested: the journal must not serve answers invalidated
        in the database after it stored them (from another machine, say; decision 0024)."""
        stale = forget_invalidated(getattr(self.engine, "cache", None), batch, self.listed_at)
        if stale:
            log.info("%d journaled answer(s) of %s were invalidated in %s since: requested again", stale,
                     self.run_ctx.node_id or self.spec.model, self.schema)

    def _remember_prompts(self, inputs: Iterable[tuple[str, ModelInput]]) -> Iterator[tuple[str, ModelInput]]:
        """Keep each key's prompt until its answer is written (provenance; at most ``window`` held), and
        until it is known to be sent (a key whose claim was lost is waited for with its prompt)."""
        try:
            for key, inp in inputs:
                self._prompts[key] = inp.prompt
                yield key, inp
                if self.lease.revoked:  # failing: claim nothing more, the map only returns what was sent
                    return
        except Exception:  # claiming failed (the claim session broke): the map's queued requests must not go
            self.lease.revoke()
            raise

    def _request(self, inputs: Iterable[tuple[str, ModelInput]]) -> None:
        size = self.batch_size
        send = functools.partial(self.engine.map_packed, batch_size=size) if size > 1 else self.engine.map_unordered
        outputs = send(self.spec.model, self._remember_prompts(inputs), window=self.window, context=self.context,
                       spend_limit=self.spend_limit, lease=self.lease)
        try:
            for key, output in outputs:
                self._on_output(key, output)
                if self._journal_error() is not None and self._results:
                    self._flush()  # not journaled: into llm_results before the next request goes out
                elif len(self._results) + len(self._errors) >= self.chunk_rows \
                        or time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
                    self._flush()
                self.progress.emit()
        except BaseException as exc:
            # failing (the claim session broke, say): send nothing more -- the requests queued in the
            # pool are dropped (lease.py) -- and keep the answers of those already sent for _salvage
            # (left in the journal only, another run taking the keys over would pay them again)
            self.lease.revoke()
            if isinstance(exc, Exception):
                self._keep_answers(outputs)
            raise
        finally:
            outputs.close()

    def _keep_answers(self, outputs) -> None:
        """The answers still to come from ``outputs`` (requests already sent), into ``_results``."""
        try:
            for key, output in outputs:
                if output.ok:
                    self._on_output(key, output)
        except Exception as exc:  # the error being raised matters more
            log.debug("could not collect the answers in flight: %s", redact(str(exc)).strip())

    def _journal_error(self):
        """The engine journal's write failure (answers are no longer kept there), or None."""
        error = getattr(getattr(self.engine, "cache", None), "write_error", None)
        if error is not None and self.report.journal_error is None:
            self.report.journal_error = str(error)
            log.warning("%s; answers are written to %s.llm_results one by one from now on", error, self.schema)
        return error

    @staticmethod
    def _stored_cost(output) -> float:
        """What the answer cost when paid for (a journal hit carries it as saved_cost_usd)."""
        return float((output.saved_cost_usd if output.cached else output.cost_usd) or 0.0)

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
        prompt = self._prompts.pop(key, None)
        if output.error_kind is ErrorKind.CLAIM_LOST:  # not sent (lease.py): wait for whoever holds it now
            self.waiting[key] = prompt
            self._dropped.append(key)
            return
        if not self.store_prompts:
            prompt = None  # provenance of a stored answer: only with store_prompts
        # done: keys requested (or failed trying); a journal hit is not a request but one key fewer to
        # request (requests_total -= 1 below) -- counting it in both printed "1024/731"
        if (output.attempts or output.error_kind is not ErrorKind.BUDGET) and not (output.ok and output.cached):
            rep.requests_done += 1
        paid = 0.0 if output.cached else float(output.cost_usd or 0.0)
        if not output.cached:
            rep.requests_sent += output.attempts  # HTTP requests really made (0: refused by an open circuit)
            rep.prompt_tokens += output.tokens.prompt
            rep.completion_tokens += output.tokens.completion
            rep.cost_usd += paid
        if output.ok:
            stored = self._stored_cost(output)
            if output.cached:  # from the engine's journal / a concurrent caller: nothing paid now
                self.engine_hits += 1
                rep.cache_hits += 1
                rep.requests_total -= 1
                rep.saved_cost_usd += stored
            self._results.append(ResultRow.of_answer(
                key, output, is_json=self.spec.is_json, model=output.model or self.spec.model,
                model_version=self._model_version(output.model), fingerprint=self.fingerprint, cost_usd=stored,
                ttl=self.ttl, run_id=self.run_ctx.run_id, node_id=self.run_ctx.node_id or None,
                column_name=self.spec.name, prompt=prompt))
            self._ok_keys.append(key)
        elif output.error_kind is ErrorKind.BUDGET:
            self._skip_for_budget([key], output.error_message)
        else:
            self._add_error(key, str(output.error_kind), output.error_message or "",
                            attempts=0 if output.cached else output.attempts)

    def _add_error(self, key: str, kind: str, message: str, attempts: int = 0) -> None:
        rep = self.report
        rep.errors += 1
        message = redact(message)
        self._errors.append(ErrorRow(key=key, node_id=self.run_ctx.node_id, model=self.spec.model,
                                     error_kind=kind, message=message, run_id=self.run_ctx.run_id,
                                     attempts=attempts, column_name=self.spec.name))
        budget = kind == ErrorKind.BUDGET.value
        if rep.first_error is None or (rep.first_error.kind == ErrorKind.BUDGET.value and not budget):
            rep.first_error = FillError(key=key, kind=kind, message=message)  # a real failure first
        if self.fail_fast and not budget and not rep.stopped:
            rep.stopped = "error"

    def _skip_for_budget(self, keys: list[str], message: str | None = None) -> None:
        """Keys the spend limit stopped: dead letters of kind budget; no new key is submitted."""
        rep = self.report
        if not rep.stopped:
            rep.stopped = "max_cost"
            # spent AND reserved: "reached (run has spent 0.0000)" read as a contradiction when the
            # requests in flight, or this request's own worst case, filled the cap
            reserved = self.spend_limit.reserved_usd if self.spend_limit is not None else 0.0
            log.warning("max_cost_usd_per_run $%.4f reached: the run has spent $%.4f and requests in flight hold "
                        "$%.4f (their worst case); %s; no more requests for %s", self.max_cost or 0.0, self._spent(),
                        reserved, message or "the next request's worst case does not fit",
                        self.run_ctx.node_id or self.spec.model)
        rep.budget_skipped += len(keys)
        self._fail_keys(keys, ErrorKind.BUDGET, message or f"not requested: max_cost_usd_per_run (${self.max_cost}) reached")

    def _spent(self) -> float:
        return self.spend_limit.spent_usd if self.spend_limit is not None else self.report.cost_usd

    def _budget_spent(self) -> float | None:
        """What the run's spend limit has spent (None: no max_cost_usd)."""
        return self.spend_limit.spent_usd if self.spend_limit is not None else None

    def _fail_keys(self, keys: list[str], kind: ErrorKind, message: str) -> None:
        for key in keys:
            self._add_error(key, kind.value, message)
            if len(self._errors) >= self.chunk_rows * 4:
                self._flush()

    def _fail_unrequested(self, cursor) -> None:
        """After max_cost: the keys never requested are budget dead letters (not claimed, not requested)."""
        while True:
            batch = cursor.fetchmany(self.claim_batch * 4)
            if not batch:
                break
            self._skip_for_budget([row[0] for row in batch])
        self._flush()

    # -- keys claimed by other runs ---------------------------------------------------------------
    def _wait_for_others(self) -> None:
        waiter = ClaimWaiter(self.claims, self.report, self.progress, self.spec.name, poll_s=self.poll_s,
                             wait_timeout_s=self.wait_timeout_s)
        waiter.wait(self.waiting, flush=self._flush, skip_for_budget=self._skip_for_budget, fail_keys=self._fail_keys,
                    request=lambda prompts: self._request((k, self.spec.model_input(p)) for k, p in prompts.items()))

    def _close(self) -> None:
        """Stop the heartbeat, release every claim of ours, close both connections."""
        self.heartbeat.stop()
        if self.claims is not None:
            self.claims.release_all()
        close_quietly(self.reader, self.writer)

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
                self._salvaged = True  # _salvage would only fail the same way and say it twice
                raise PgLlmError(f"could not write {len(results)} answer(s) of model '{self.spec.model}' to "
                                 f"{self.schema}.llm_results: {redact(str(exc)).strip()}; "
                                 f"{where_kept(self.engine, [r.key for r in results])}") from exc
        if ok_keys:
            self._write(resolve_errors, ok_keys)
        if errors:
            self._write(write_errors, errors)
        dropped, self._dropped = self._dropped, []  # still ours when dropped unconfirmed: take_over needs them free
        self.claims.release(ok_keys + [e.key for e in errors] + dropped)  # results are committed: let others see them
        self._drain_logs()
        if self.run_open and time.monotonic() - self.last_run_heartbeat >= RUN_HEARTBEAT_EVERY_S:
            self.last_run_heartbeat = time.monotonic()
            self._write(run_heartbeat, self.run_ctx.run_id)
        self.last_flush = time.monotonic()

    def _drain_logs(self) -> None:
        self.call_logs.drain(lambda logs: self._write(write_calls, logs))

    def _salvage(self) -> None:
        """On the way out after an error: write what was paid if at all possible."""
        if not self._results or self._salvaged:
            return
        try:
            if self.writer is None or self.writer.closed:
                self.writer = self._open()
            self.answers_written += self._write(write_results, self._results)
            self._results = []
        except Exception as exc:
            log.error("could not write %d paid answers to %s.llm_results (%s); %s", len(self._results),
                      self.schema, redact(str(exc)).strip(), where_kept(self.engine, [r.key for r in self._results]))

    def _record_failed_run(self) -> None:
        """On the way out after an error: the call logs (every paid request) and the run's counts,
        status failed, if the database still answers; best effort, the error itself is raised."""
        if not self.run_open:
            return
        try:
            if self.writer is None or self.writer.closed:
                self.writer = self._open()
            self._drain_logs()
            self._record_run("failed")
        except Exception as exc:
            log.error("could not record the failed fill in %s.llm_calls / llm_runs: %s", self.schema,
                      redact(str(exc)).strip())

    def _record_run(self, status: str, conn=None) -> None:
        rep = self.report
        # requests, tokens, cost, hits and saved: derived from llm_calls by record_run (run_totals.py)
        record_run(conn or self.writer, self.schema, self.run_ctx.run_id, target=self.run_ctx.target,
                   status=status, finished_fill=self.run_open, rows=rep.rows, distinct_keys=rep.distinct_keys,
                   errors=rep.errors)
        self.run_open = False

    def _report_from_calls(self, conn) -> None:
        """The report's requests, tokens, cost, hits and saving: this fill's llm_calls rows (the
        one source of truth, run_totals.py), not the answers it happened to see."""
        rep = self.report
        with conn.cursor() as cur:
            totals = run_totals(cur, self.schema, self.run_ctx.run_id, node_id=self.run_ctx.node_id,
                                column_name=self.spec.name, one_column=True)
        rep.requests_sent, rep.prompt_tokens, rep.completion_tokens = \
            totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]
        rep.cost_usd, rep.cache_hits, rep.saved_cost_usd = \
            totals["cost_usd"], totals["cache_hits"], totals["saved_cost_usd"]

    def _finish(self) -> None:
        rep = self.report
        rep.elapsed_s = time.monotonic() - self.progress.started
        rep.eta_s = 0.0 if not rep.stopped else None
        rep.budget_spent_usd = self._budget_spent()
        too_many = too_many_errors(rep, self.max_error_rate)
        failed = (self.fail_fast and rep.first_error is not None and rep.first_error.kind != ErrorKind.BUDGET.value) \
            or too_many
        try:
            writer = self._open()
            try:
                self._record_run("failed" if failed else "partial" if rep.errors else "success", writer)
                self._report_from_calls(writer)
            finally:
                writer.close()
        except Exception as exc:
            log.error("could not record the run in %s.llm_runs: %s", self.schema, redact(str(exc)).strip())
        self.progress.emit(force=True)
        if too_many and not self.fail_fast:
            raise error_rate_exceeded(rep, self.max_error_rate, self.schema, self.answers_written)
        if failed:
            raise first_error_fails(rep, self.schema, self.answers_written)

