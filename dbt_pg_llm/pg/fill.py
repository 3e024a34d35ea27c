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
   taken over if their claimer died (its session is gone, or its heartbeat is older than
   ``claim_timeout_s``); the engine's call logs go to ``llm_calls``; the invocation's counts are
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

Here: ``fill_column`` and its ``_Fill`` (also driven by ``frame.LlmFrameSession``): counting,
requesting, writing, progress and the final report.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import ConfigError, ErrorKind, ModelError, PgLlmError, redact
from ..keys import key_sql
from ..model_io import ModelInput
from .budget import run_spend_limit
from .claims import ClaimHeartbeat, _Claims, heartbeat_every
from .connectivity import buffered_sinks, db_errors
from .join import _fresh, distinct_prompts_sql, quote_literal, uncached_prompts_sql
from .migrations import ensure_call_partitions, ensure_migrated, quote_ident
from .outcome import error_rate_exceeded, too_many_errors, where_kept
from .progress import AttemptCounter, ProgressPacer, eta_s
from .report import FillError, FillReport
from .runs import run_heartbeat, run_started
from .spec import ColumnSpec, RunContext
from .writers import ErrorRow, ResultRow, record_run, resolve_errors, write_calls, write_errors, write_results

__all__ = ["fill_column"]

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
    return _Fill(connect, engine, spec, audit_schema=audit_schema, run=run, on_error=on_error,
                 cache_ttl_days=cache_ttl_days, max_cost_usd=max_cost_usd, progress=progress, window=window,
                 chunk_rows=chunk_rows, claim_timeout_s=claim_timeout_s,
                 wait_timeout_s=wait_timeout_s, max_error_rate=max_error_rate,
                 store_prompts=store_prompts).run(source_sql)


class _Fill(_Claims):
    def __init__(self, connect, engine, spec: ColumnSpec, *, audit_schema, run, on_error, cache_ttl_days,
                 max_cost_usd, progress, window, chunk_rows, claim_timeout_s, wait_timeout_s, poll_s=0.25,
                 max_error_rate: float | None = None, store_prompts: bool = True):
        if not isinstance(run, RunContext):
            raise TypeError("run: pass a RunContext(run_id=..., node_id=...)")
        if (window is not None and window < 1) or chunk_rows < 1:
            raise ValueError("window and chunk_rows must be >= 1")
        if max_cost_usd is not None and (not isinstance(max_cost_usd, (int, float)) or max_cost_usd <= 0):
            raise ConfigError([f"max_cost_usd: {max_cost_usd!r} must be a number > 0, or unset for no limit"])
        if cache_ttl_days is not None and (not isinstance(cache_ttl_days, (int, float)) or cache_ttl_days <= 0):
            raise ConfigError([f"cache_ttl_days: {cache_ttl_days!r} must be a number of days > 0, or unset"])
        if isinstance(claim_timeout_s, bool) or not isinstance(claim_timeout_s, (int, float)) or claim_timeout_s <= 0:
            raise ConfigError([f"claim_timeout_s: {claim_timeout_s!r} must be a number of seconds > 0, e.g. 120"])
        if max_error_rate is not None and (isinstance(max_error_rate, bool) or not 0 <= max_error_rate <= 1):
            raise ConfigError([f"max_error_rate: {max_error_rate!r} must be a share from 0 to 1, or unset"])
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
        self.progress_cb = progress
        self.chunk_rows = chunk_rows
        self.claim_timeout_s = claim_timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        self.heartbeat = ClaimHeartbeat(connect, self.q, self.token, heartbeat_every(claim_timeout_s))
        self.context = run.as_context(operation=spec.kind)
        model = engine.registry.get(spec.model)  # RegistryError (listing known models) if unknown
        self.model_config = model.config
        # Calls in flight plus answers waiting for the consumer: 4x the model's concurrency, so the
        # pool stays full while this thread claims keys and COPYs answers (a fixed 256 capped a
        # max_concurrency of 256 well below it: the answers being written hold window places).
        self.window = window or max(256, 4 * model.config.max_concurrency)
        self.claim_batch = max(self.window, 64)
        self.fingerprint = spec.fingerprint(self.model_config)
        self.report = FillReport(model=spec.model, node_id=run.node_id)
        self.sinks = buffered_sinks(engine)
        self.reader = self.writer = None
        self.started = time.monotonic()
        self.pacer = ProgressPacer()
        self.attempt_counter = AttemptCounter(self.context)  # retries / 429s of this fill, for progress
        self.last_flush = time.monotonic()
        self.first_submit: float | None = None
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
            self.run_open = True
            self.reader = self._open()
            self._count_attempts(True)
            self.heartbeat.start()
            if self.max_cost is not None:
                self.spend_limit = run_spend_limit(self.writer, self.schema, self.run_ctx.run_id, self.max_cost)
                self.report.budget_cap_usd = float(self.max_cost)
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
                left = [r.key for r in self._results]
                kept = (f"{len(left)} paid answer(s) could not be written to {self.schema}.llm_results: "
                        f"{where_kept(self.engine, left)}" if left else
                        f"the answers received were written to {self.schema}.llm_results")
                raise PgLlmError(f"the database connection broke while filling with model '{self.spec.model}': "
                                 f"{' '.join(redact(str(exc)).split())}; {kept}") from exc
            raise
        finally:
            self._count_attempts(False)
            self._release_all()
        self._finish()
        return rep

    def _count_attempts(self, on: bool) -> None:
        """Add (remove) this fill's retry / 429 counter to the engine's log dispatcher."""
        dispatcher = getattr(self.engine, "log", None)
        if on and callable(getattr(dispatcher, "add", None)):
            dispatcher.add(self.attempt_counter)
        elif not on and callable(getattr(dispatcher, "remove", None)):
            dispatcher.remove(self.attempt_counter)

    def _prompts_sql(self, source_sql: str) -> str:
        return distinct_prompts_sql(source_sql, self.spec.prompt_sql)

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
        return uncached_prompts_sql(source_sql, self.spec, self.fingerprint, self.schema)

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
            self.report.waiting_keys = len(self.waiting)
            for i, key in enumerate(mine):
                if self.report.stopped:
                    rest = mine[i:]
                    self._release(rest)
                    if self.report.stopped == "max_cost":
                        self._skip_for_budget(rest)
                    return
                if self.first_submit is None:
                    self.first_submit = time.monotonic()
                yield key, spec.model_input(prompts[key])

    def _remember_prompts(self, inputs: Iterable[tuple[str, ModelInput]]) -> Iterator[tuple[str, ModelInput]]:
        """Keep each key's prompt until its answer is written (provenance; at most ``window`` held)."""
        for key, inp in inputs:
            if self.store_prompts:
                self._prompts[key] = inp.prompt
            yield key, inp

    def _request(self, inputs: Iterable[tuple[str, ModelInput]]) -> None:
        size = self.spec.batch_size or getattr(self.model_config, "batch_size", 1)
        send = functools.partial(self.engine.map_packed, batch_size=size) if size > 1 else self.engine.map_unordered
        for key, output in send(self.spec.model, self._remember_prompts(inputs), window=self.window,
                                context=self.context, spend_limit=self.spend_limit):
            self._on_output(key, output)
            if self._journal_error() is not None and self._results:
                self._flush()  # not journaled: into llm_results before the next request goes out
            elif len(self._results) + len(self._errors) >= self.chunk_rows \
                    or time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
                self._flush()
            self._emit_progress()

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
        prompt = self._prompts.pop(key, None)  # provenance of a stored answer (None: store_prompts off)
        if output.attempts or output.error_kind is not ErrorKind.BUDGET:  # else: never sent
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
            is_json = self.spec.kind == "extract"
            self._results.append(ResultRow(
                key=key, model=output.model or self.spec.model, model_version=self._model_version(output.model),
                fingerprint=self.fingerprint,
                output_text=None if is_json else output.text,
                output_json=json.dumps(output.value, ensure_ascii=False, separators=(",", ":")) if is_json else None,
                confidence=output.confidence, prompt_tokens=output.tokens.prompt,
                completion_tokens=output.tokens.completion, cost_usd=stored, truncated=bool(output.truncated),
                expires_at=(datetime.now(timezone.utc) + self.ttl) if self.ttl else None,
                run_id=self.run_ctx.run_id, node_id=self.run_ctx.node_id or None, column_name=self.spec.name,
                prompt=prompt))
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
                                     attempts=attempts))
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
            log.warning("max_cost_usd %.4f reached (run has spent %.4f): no more requests for %s",
                        self.max_cost or 0.0, self._spent(), self.run_ctx.node_id or self.spec.model)
        rep.budget_skipped += len(keys)
        self._fail_keys(keys, ErrorKind.BUDGET, message or f"not requested: max_cost_usd_per_run (${self.max_cost}) reached")

    def _spent(self) -> float:
        return self.spend_limit.spent_usd if self.spend_limit is not None else self.report.cost_usd

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
            self._skip_for_budget([k for k, _ in batch])
        self._flush()

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
        self._release(ok_keys + [e.key for e in errors])  # results are committed: let others see them
        self._drain_logs()
        if self.run_open and time.monotonic() - self.last_run_heartbeat >= RUN_HEARTBEAT_EVERY_S:
            self.last_run_heartbeat = time.monotonic()
            self._write(run_heartbeat, self.run_ctx.run_id)
        self.last_flush = time.monotonic()

    def _drain_logs(self) -> None:
        for sink in self.sinks:
            logs = sink.drain()
            if logs:
                self._write(write_calls, logs, defaults=self.run_ctx.as_context())

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
        record_run(conn or self.writer, self.schema, self.run_ctx.run_id, target=self.run_ctx.target,
                   status=status, finished_fill=self.run_open, rows=rep.rows, distinct_keys=rep.distinct_keys,
                   requests=rep.requests_sent, cache_hits=rep.cache_hits, errors=rep.errors,
                   prompt_tokens=rep.prompt_tokens, completion_tokens=rep.completion_tokens, cost_usd=rep.cost_usd,
                   saved_cost_usd=rep.saved_cost_usd)
        self.run_open = False

    def _progress_due(self) -> bool:
        return self.progress_cb is not None and time.monotonic() - self.pacer.last >= self.pacer.every_s

    def _emit_progress(self, force: bool = False) -> None:
        """A progress event at most every 10 s, or per 10% of the keys to request (``ProgressPacer``)."""
        if self.progress_cb is None:
            return
        now = time.monotonic()
        rep = self.report
        if force:
            self.pacer.mark(rep.requests_done, rep.requests_total, now)
        elif not self.pacer.due(rep.requests_done, rep.requests_total, now):
            return
        rep.elapsed_s = now - self.started
        rep.retries, rep.rate_limited = self.attempt_counter.retries, self.attempt_counter.rate_limited
        rep.eta_s = self._eta(now)
        rep.budget_spent_usd = self._spent() if self.spend_limit is not None else None
        try:
            self.progress_cb(rep.as_progress())
        except Exception:  # a progress printer must never fail a run
            log.exception("progress callback failed")

    def _eta(self, now: float) -> float | None:
        """At the keys/s observed since the first request: retries and 429 back-off included."""
        rep = self.report
        return eta_s(max(rep.requests_total - rep.requests_done, 0), rep.requests_done,
                     None if self.first_submit is None else max(now - self.first_submit, 1e-6))

    def _finish(self) -> None:
        rep = self.report
        rep.elapsed_s = time.monotonic() - self.started
        rep.eta_s = 0.0 if not rep.stopped else None
        rep.budget_spent_usd = self._spent() if self.spend_limit is not None else None
        too_many = too_many_errors(rep, self.max_error_rate)
        failed = (self.fail_fast and rep.first_error is not None and rep.first_error.kind != ErrorKind.BUDGET.value) \
            or too_many
        try:
            writer = self._open()
            try:
                self._record_run("failed" if failed else "partial" if rep.errors else "success", writer)
            finally:
                writer.close()
        except Exception as exc:
            log.error("could not record the run in %s.llm_runs: %s", self.schema, redact(str(exc)).strip())
        if self.progress_cb is not None:
            self._emit_progress(force=True)
        if too_many and not self.fail_fast:
            raise error_rate_exceeded(rep, self.max_error_rate, self.schema, self.answers_written)
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

