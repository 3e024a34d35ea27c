"""Embeddings on the same engine: each distinct (model, dimensions, text) is paid for once.

Usage (the adapter's ``llm_embed_fill`` and other operators call this; no dbt import)::

    from dbt_pg_llm.operators.embed import embed_texts, embed, embedding_fingerprint, EMBEDDINGS_TABLE

    report = embed_texts(connect, engine, "embedder", texts, dimensions=256,
                         audit_schema="llm_audit", run=run_context)   # fills <schema>.llm_embeddings
    vectors = embed(connect, engine, "embedder", ["a query"], dimensions=256)  # [[float, ...] | None]

``connect()`` returns a new DB-API (psycopg2) connection (set to autocommit here); ``engine`` is the Engine
(its registry gives the model config, its ResultCache the durable journal); ``run`` a
``pg.spec.RunContext`` (or None). The key of a text is ``keys.cache_key(fp, text)`` with
``fp = embedding_fingerprint(config, dimensions)``; in SQL ``keys.key_sql(fp, text_sql)``, joined to
``<schema>.llm_embeddings.key`` (``vec``: pgvector's ``vector`` where the extension was there when the
schema was migrated, else ``real[]``; the join casts it to ``vector(dims)`` where pgvector exists).

What a fill does, in order: keys already in ``llm_embeddings`` are skipped; keys whose vector is in
the journal (paid by a process killed before its write) are written from it without a request;
the rest are claimed (``pg.claims.Claims``: another run's keys are waited for, or taken over when
its claimer died); claimed texts go in requests of at most ``max_inputs`` inputs and
``max_request_tokens`` tokens (OpenAI: 2,048 and 300,000); a text over ``max_input_tokens`` is
truncated (``truncate=False``: that row fails alone). Each request reserves its worst-case cost on
the spend cap before it is sent, is retried by the model's RetryPolicy (tenacity: 429 with its
Retry-After, 5xx, timeouts) and writes one ``llm_calls`` row per HTTP attempt (operation 'embed',
tokens, cost). A 400 for a request of several inputs is split in halves until the bad input is
alone: one bad row fails only itself. Vectors go to the journal first, then to Postgres, then
the claims are released.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

import aiohttp

from ..errors import ConfigError, ErrorKind, ModelError, redact
from ..models.config import ModelConfig
from ..models.model_io import TokenUsage
from ..models.pricing import cost_usd
from ..models.providers import provider_for
from ..models.providers.base import classify_http_error, classify_transport_error
from ..models.spend import SpendLimit, active_limit
from ..pg.vectors import (EMBEDDINGS_TABLE, NONFINITE, bound_malloc_arenas, copy_data, fetch_vectors, parse_embeddings,
                          present_keys, store_copy, store_vectors, stored_keys, vector_from_b64, vector_storage,
                          vector_to_b64)
from ..urls import endpoint
from .embed_audit import spool_sink
from .embed_journal import RequestJournal
from .embed_keys import (MAX_INPUT_TOKENS, approx_tokens, embedding_config, embedding_fingerprint, embedding_key,
                         embedding_key_sql, keyed_texts, prepare_text)

__all__ = ["keyed_texts", "EMBEDDINGS_TABLE", "MAX_INPUTS", "MAX_REQUEST_TOKENS", "MAX_INPUT_TOKENS", "EmbedReport",
           "embedding_fingerprint", "embedding_key", "embedding_key_sql", "embedding_config", "embed_texts",
           "embed", "fetch_vectors", "vector_from_b64", "vector_to_b64", "store_vectors", "present_keys",
           "prepare_text"]

_log = logging.getLogger("dbt_pg_llm.embed")
MAX_INPUTS = 2048  # OpenAI's input-array limit
MAX_REQUEST_TOKENS = 300_000  # OpenAI: tokens summed over one request's inputs
_WAIT_POLL_S = 0.2
_RELEASE_EVERY = 8 * MAX_INPUTS  # written keys whose claims are released in one statement


@dataclass
class EmbedReport:
    """What one ``embed_texts`` did. ``errors``: key -> message for rows that got no vector."""

    distinct_keys: int = 0
    cached: int = 0  # already in llm_embeddings
    from_journal: int = 0  # paid earlier, written from the journal without a request
    waited: int = 0  # embedded by another run while we waited on its claims
    embedded: int = 0  # paid by this call
    requests: int = 0  # HTTP attempts (== this call's llm_calls rows)
    prompt_tokens: int = 0
    cost_usd: float = 0.0
    truncated: int = 0
    budget_skipped: int = 0
    errors: dict = field(default_factory=dict)
    batched: int = 0  # mode='batch': texts submitted now as provider batch lines (embed_batch.py)
    in_batch: int = 0  # in a batch still open (or claimed by another run): collected later
    batches: list = field(default_factory=list)  # the provider ids of the batches submitted now
    batch_problems: list = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.distinct_keys} distinct text(s): {self.cached} cached, {self.from_journal} from the journal, "
                f"{self.waited} by another run, {self.embedded} embedded in {self.requests} request(s) "
                f"({self.prompt_tokens} tokens, ${self.cost_usd:.6f}), {len(self.errors)} failed"
                + (f", {self.truncated} truncated" if self.truncated else "")
                + (f", {self.budget_skipped} skipped by the spend cap" if self.budget_skipped else "")
                + (f", {self.batched} sent in {len(self.batches)} provider batch(es) (collected by a later run)"
                   if self.batched else "")
                + (f", {self.in_batch} waiting in open batches" if self.in_batch else ""))


class _Filler:
    """One embed_texts call: the HTTP side (async) and its writes (one connection, serialised)."""

    def __init__(self, conn, engine, model_name: str, config: ModelConfig, dimensions: int | None, q: str,
                 run, column_name: str | None, limit: SpendLimit | None, report: EmbedReport,
                 max_inputs: int, max_request_tokens: int, audit_schema: str = "llm_audit"):
        self.conn, self.engine, self.model_name, self.config = conn, engine, model_name, config
        self.dimensions, self.q, self.run, self.column_name = dimensions, q, run, column_name
        self.limit, self.report = limit, report
        self.max_inputs, self.max_request_tokens = max_inputs, max_request_tokens
        self.provider = provider_for(config, model_name)
        self.url = self._url()
        self.headers = {**self.provider.wire_headers(), "content-type": "application/json"}
        self.lock = threading.RLock()  # one connection, written from the requests' worker threads
        # one journal transaction at a time: concurrent SQLite writers wait in its busy handler's
        # sleeps (100,000 texts: 40 s of thread time for 3 s of writes); queued here they pipeline
        # with the COPYs (self.lock) instead
        self.journal_lock = threading.Lock()
        self.copy_slots = threading.BoundedSemaphore(2)  # COPY streams built or being sent (write)
        self.schema = audit_schema
        self.sink = spool_sink(engine)  # each request on local disk before it is sent (call_spool.py)
        self.journal: RequestJournal | None = None  # set by _fill_texts once there is something to send
        self.released: Callable[[list[str]], None] | None = None  # gives up claims on keys once written
        self.vector_storage = vector_storage(conn, q)  # llm_embeddings.vec: pgvector's type, else real[]

    def _url(self) -> str:
        base = self.config.base_url or ""
        if self.config.provider == "azure":
            deployment = getattr(self.config, "deployment", None) or self.config.model_version or ""
            return endpoint(base, f"/openai/deployments/{deployment}/embeddings",
                            {"api-version": getattr(self.config, "api_version", None) or ""})
        return endpoint(base, "/embeddings")

    def groups(self, items: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """(key, text) items in requests of at most max_inputs inputs and max_request_tokens tokens."""
        out, cur, toks = [], [], 0
        for item in items:
            t = approx_tokens(item[1])
            if cur and (len(cur) >= self.max_inputs or toks + t > self.max_request_tokens):
                out.append(cur)
                cur, toks = [], 0
            cur.append(item)
            toks += t
        if cur:
            out.append(cur)
        return out

    async def run_stream(self, keys: list[str], admit: Callable[[list[str]], list[tuple[str, str]]]) -> None:
        """Send ``keys`` as they are admitted: ``admit`` (in a thread: journal, claims, texts) takes one
        request's worth at a time, so the first request leaves after one slice's claims and the rest
        is claimed while requests are in flight (claiming 100,000 keys up front took ~1.5 s)."""
        workers = max(1, self.config.max_concurrency)
        queue: asyncio.Queue = asyncio.Queue(maxsize=workers)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def produce():
                try:
                    for i in range(0, len(keys), self.max_inputs):
                        for group in self.groups(await asyncio.to_thread(admit, keys[i:i + self.max_inputs])):
                            await queue.put(group)
                finally:
                    for _ in range(workers):
                        await queue.put(None)

            async def work():
                while (group := await queue.get()) is not None:
                    await self.request(session, group)
            await asyncio.gather(produce(), *(work() for _ in range(workers)))

    async def request(self, session, group: list[tuple[str, str]]) -> None:
        """Embed one group; a 400 splits it until the bad input is alone (its row fails, no other)."""
        tokens = sum(approx_tokens(t) for _, t in group)
        reservation = None
        if self.limit is not None:
            reservation = self.limit.try_reserve(cost_usd(self.config, TokenUsage(tokens, 0)))
            if reservation is None:
                self.report.budget_skipped += len(group)
                for key, _ in group:
                    self.report.errors[key] = "budget: llm.max_cost_usd_per_run reached; requested on the next run"
                return
        try:
            data, attempts = await self.config.retry.run(lambda: self.send(session, group))
        except ModelError as error:
            if reservation is not None:
                reservation.release()
            if error.kind is ErrorKind.INVALID_INPUT and len(group) > 1:
                half = len(group) // 2
                await asyncio.gather(self.request(session, group[:half]), self.request(session, group[half:]))
                return
            for key, _ in group:
                self.report.errors[key] = f"{error.kind.value}: {redact(error.message)}"
            return
        if reservation is not None:
            reservation.settle(data["cost"])
        await asyncio.to_thread(self.store, group, data)

    async def send(self, session, group: list[tuple[str, str]]) -> dict:
        body: dict[str, Any] = {"model": self.config.model_version, "input": [t for _, t in group],
                                "encoding_format": "base64"}
        if self.dimensions:
            body["dimensions"] = int(self.dimensions)
        started = time.monotonic()
        status, error, usage, cost = 0, None, 0, 0.0
        # marked on the call spool before it goes out, like a chat attempt: a process killed while
        # waiting still leaves a request (kind 'lost') that the next run writes to llm_calls
        call_id = uuid.uuid4().hex
        if self.sink is not None:
            self.sink.sending(call_id, {"model": self.model_name, "operation": "embed", "input_hash": group[0][0],
                                        "attempt": 1, "context": self.context()})
        try:
            async with session.post(self.url, json=body, headers=self.headers) as resp:
                status = resp.status
                raw = await resp.read()
                if status != 200:
                    error = classify_http_error(status, raw, resp.headers, self.model_name)
                    raise error
                received = await asyncio.to_thread(self.receive, group, raw)
                del raw
                usage, cost = received["tokens"], received["cost"]
                return received
        except ModelError as exc:
            error = exc
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = classify_transport_error(exc, self.model_name, self.config.timeout_ms, self.url)
            raise error from None
        finally:
            self.report.requests += 1
            self.report.prompt_tokens += usage
            self.report.cost_usd += cost
            await asyncio.to_thread(self.log_call, group[0][0], status, error, usage, cost,
                                    (time.monotonic() - started) * 1000, call_id)

    def context(self) -> dict:
        run = self.run
        return {"run_id": getattr(run, "run_id", None), "node_id": getattr(run, "node_id", None),
                "column_name": self.column_name}

    def log_call(self, first_key: str, status: int, error: ModelError | None, tokens: int, cost: float,
                 latency_ms: float, call_id: str) -> None:
        """One llm_calls row per HTTP attempt (operation 'embed'), spooled first (its ``call_id``
        settles the marker): if the write fails, the record stays on disk for the next run to
        replay; a failed write never fails the fill."""
        from ..models.logs import ModelLog
        from .embed_audit import write_call

        write_call(self.sink, self.conn, self.lock, self.schema, ModelLog(
            model=self.model_name, operation="embed", input_hash=first_key, attempt=1, prompt_tokens=tokens,
            latency_ms=latency_ms, cost_usd=cost, context=self.context(), call_id=call_id,
            error_kind=error.kind.value if error is not None else ErrorKind.NONE.value,
            error_message=error.message[:1000] if error is not None else None, http_status=status or None))

    def receive(self, group: list[tuple[str, str]], raw: bytes) -> dict:
        """A 200 answer: parsed (a wrong count of vectors is an API error), then journaled as
        received (one entry for the request, durable across kill -9: embed_journal.py) before
        anything else happens to it. Its tokens: the answer's usage, else our count."""
        payload = parse_embeddings(raw, len(group))
        usage = int((payload.get("usage") or {}).get("prompt_tokens") or sum(approx_tokens(t) for _, t in group))
        cost = cost_usd(self.config, TokenUsage(usage, 0))
        journal = self.journal or RequestJournal(getattr(self.engine, "cache", None))
        with self.journal_lock:
            request_id = journal.put([k for k, _ in group], raw, payload["vectors"], self.model_name,
                                     usage // max(1, len(group)), cost / len(group))
        return {"vectors": payload["vectors"], "tokens": usage, "cost": cost, "journal_id": request_id}

    def store(self, group: list[tuple[str, str]], data: dict) -> None:
        """The journaled answer into llm_embeddings, then its journal entry is dropped (the vectors
        are in Postgres) and its keys handed to ``self.released`` (their claims are given up a few
        requests at a time: another run waiting on them need not wait for the end of this fill)."""
        vectors = data.pop("vectors")  # the filler keeps no reference: freed once written
        per = data["tokens"] // max(1, len(group))
        keys = [k for k, _ in group]
        stored = self.write(list(zip(keys, vectors)), per)
        del vectors
        journal = self.journal or RequestJournal(getattr(self.engine, "cache", None))
        with self.journal_lock:
            journal.done(data.get("journal_id"))
        if self.released is not None:
            self.released(keys)
        self.report.embedded += len(stored)

    def write(self, rows: list[tuple[str, str]], tokens_each: int = 0) -> list[str]:
        """(key, base64 float32 vector) rows by binary COPY: no float is formatted or parsed as text
        (psycopg2's list adaptation cost ~1 s per 2,048 x 256 floats, a text COPY ~0.6 s), through a
        staging table so a key another run wrote meanwhile does not fail the COPY. Returns the keys
        stored: a vector holding NaN or infinity is not, its row fails (``NONFINITE``)."""
        if not rows:
            return []
        # the next COPY stream is built while one is sent (the connection's lock), but no more than that:
        # a stream is ~2x its vectors, and 16 of them waiting for the lock were ~70 MB of peak RSS
        with self.copy_slots:
            data, rejected = copy_data(rows, self.model_name, tokens_each, getattr(self.run, "run_id", None),
                                       vector=self.vector_storage)
            if data is not None:
                with self.lock:
                    store_copy(self.conn, self.q, data)
            del data
        for key in rejected:  # paid, but unusable: the row fails (a dead letter), the rest are stored
            self.report.errors[key] = NONFINITE
        rejected = set(rejected)
        return [k for k, *_ in rows if k not in rejected]


def embed_texts(connect: Callable[[], Any], engine, model_name: str, texts: Iterable[str | None] | Mapping[str, str], *,
                audit_schema: str = "llm_audit", run=None, column_name: str | None = None,
                **kwargs) -> EmbedReport:
    """Make sure every distinct non-NULL text of ``texts`` has a vector in ``<schema>.llm_embeddings``
    (see the module docstring); returns what it did. Never raises for a failed row: see ``errors``
    (each also a dead letter in ``llm_errors``, resolved once its text has a vector).

    With a ``run`` (its ``run_id``), the run's ``llm_runs`` row is kept like a chat fill's
    (``runs.run_started`` first, ``writers.record_run`` at the end: requests, tokens and cost derived
    from ``llm_calls``), and the call spools that dead processes left are replayed first."""
    from .embed_audit import EmbedRun

    with EmbedRun(connect, engine, audit_schema, run, model_name, column_name) as scope:
        scope.report = _fill_texts(connect, engine, model_name, texts, audit_schema=audit_schema, run=run,
                                   column_name=column_name, **kwargs)
        return scope.report


def _fill_texts(connect: Callable[[], Any], engine, model_name: str, texts: Iterable[str | None] | Mapping[str, str], *,
                dimensions: int | None = None, audit_schema: str = "llm_audit", run=None,
                column_name: str | None = None, max_cost_usd: float | None = None,
                spend_limit: SpendLimit | None = None, claim_timeout_s: float = 60.0,
                max_inputs: int = MAX_INPUTS, max_request_tokens: int = MAX_REQUEST_TOKENS,
                max_input_tokens: int = MAX_INPUT_TOKENS, truncate: bool = True, mode: str | None = None,
                batch=None, known_missing: bool = False) -> EmbedReport:
    """``embed_texts`` without the run's bookkeeping; ``mode='batch'``: through the provider's batch
    API (``embed_batch.submit_embeddings``; ``batch``: a BatchPolicy or its mapping).
    ``known_missing``: the caller has just found that none of ``texts`` has a vector (embed_relation's
    anti-join), so the first lookup is skipped; each slice is still looked up once claimed.
    ``texts`` may be a ``{key: text}`` mapping of distinct texts whose keys the caller computed
    (embed_relation: Postgres, in the same query)."""
    from ..pg.claims import ClaimHeartbeat, Claims, heartbeat_every, lease_seconds
    from ..pg.migrations import ensure_migrated, quote_ident

    config = embedding_config(engine, model_name)
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ConfigError([f"dimensions: {dimensions!r} must be a positive whole number, e.g. 256"],
                          context="embedding column")
    if mode not in (None, "normal", "batch"):
        raise ConfigError([f"mode: {mode!r} must be 'batch' (the provider's batch API, collected by a later run) "
                           "or 'normal'"], context="embedding column")
    if mode == "batch":
        from .embed_batch import submit_embeddings

        texts = list(texts.values()) if isinstance(texts, Mapping) else list(texts)
        batched = submit_embeddings(connect, engine, model_name, texts, dimensions=dimensions,
                                    audit_schema=audit_schema, run=run, column_name=column_name, policy=batch,
                                    max_cost_usd=max_cost_usd, spend_limit=spend_limit,
                                    claim_timeout_s=claim_timeout_s, max_input_tokens=max_input_tokens,
                                    truncate=truncate)
        if batched is not None:
            return batched  # else fewer than the policy's min_keys are missing: embedded now, below
    fp = embedding_fingerprint(config, dimensions)
    report = EmbedReport()
    by_key = dict(texts) if isinstance(texts, Mapping) else keyed_texts(fp, texts)
    report.distinct_keys = len(by_key)
    q = quote_ident(audit_schema)
    conn = connect()
    conn.autocommit = True  # each write is durable at once; claims live on this session
    try:
        ensure_migrated(conn, audit_schema)
        stored = set() if known_missing else stored_keys(conn, q, list(by_key))
        missing = [k for k in by_key if k not in stored]
        report.cached = report.distinct_keys - len(missing)
        from .embed_batch import in_open_batches

        queued = in_open_batches(conn, q, model_name, missing)  # their batch pays for them
        if queued:
            report.in_batch = len(queued)
            missing = [k for k in missing if k not in queued]
        limit = spend_limit or (SpendLimit(max_cost_usd) if max_cost_usd else active_limit())
        filler = _Filler(conn, engine, model_name, config, dimensions, q, run, column_name, limit, report,
                         max_inputs, max_request_tokens, audit_schema)
        if not missing:
            return report
        bound_malloc_arenas()  # before the fill's threads exist: their freed buffers are reused, not kept per thread
        filler.journal = RequestJournal(getattr(engine, "cache", None))
        filler.journal.absorb()  # requests a killed process paid but never wrote: per-key entries for _from_journal
        token = uuid.uuid4().hex
        # claims on a session of their own: a slice is claimed while the vectors of earlier ones are
        # COPYed on ``conn`` (one psycopg2 connection runs one statement at a time)
        claim_conn = connect()
        claim_conn.autocommit = True
        claims = Claims(claim_conn, lambda: claim_conn, audit_schema, run or SimpleNamespace(run_id=None, node_id=None),
                        model_name, "embed", SimpleNamespace(cache_hits=0, requests_total=0, saved_cost_usd=0.0),
                        claim_timeout_s, token, column_name=column_name)
        released: set[str] = set()
        written: list[str] = []
        release_lock = threading.Lock()

        def release(keys: list[str]) -> None:
            """Give up the claims of written keys some requests at a time (one delete per request cost
            ~3x the Postgres CPU per key of a large one): another run waiting on them stops waiting
            within ~_RELEASE_EVERY keys, not at the end of a long fill."""
            with release_lock:
                written.extend(keys)
                if len(written) < _RELEASE_EVERY:
                    return
                batch = written[:]
                written.clear()
                claims.release(batch)
                released.update(batch)
        filler.released = release
        beat = ClaimHeartbeat(connect, q, token, heartbeat_every(claim_timeout_s),
                              lease_s=lease_seconds(claim_timeout_s))
        beat.start()
        try:
            pending = list(missing)
            deadline = time.monotonic() + 3 * claim_timeout_s
            first = True
            while pending:
                mine: list[str] = []

                def admit(keys: list[str], first: bool = first) -> list[tuple[str, str]]:
                    """One slice: journaled vectors written, the rest claimed, their texts to send."""
                    keys = _from_journal(engine, filler, keys, report)
                    got = claims.claim(keys) if first else claims.take_over(keys)
                    stored = stored_keys(claim_conn, q, got)  # written by a claimer that died after writing
                    got = [k for k in got if k not in stored]
                    mine.extend(got)
                    items = []
                    for key in got:
                        text, why = prepare_text(by_key[key], max_input_tokens, truncate)
                        if why:
                            report.errors[key] = why
                            continue
                        report.truncated += text != by_key[key]
                        items.append((key, text))
                    return items

                asyncio.run(filler.run_stream(pending, admit))
                first = False
                claims.release([k for k in mine if k not in released])  # failed or skipped keys
                ours = set(mine)  # sets: 100,000 keys are 100,000 lookups
                others = [k for k in pending if k not in ours]  # only another run's keys need a look
                done = stored_keys(conn, q, others) if others else set()
                report.waited += len([k for k in pending if k in done and k not in ours])
                pending = [k for k in pending if k not in done and k not in ours]
                if pending:
                    if time.monotonic() > deadline:
                        for key in pending:
                            report.errors[key] = ("claimed: another run still holds this text's claim after "
                                                  f"{3 * claim_timeout_s:g} s; rerun to embed it")
                        break
                    time.sleep(_WAIT_POLL_S)
        finally:
            beat.stop()
            claims.release_all()
            claim_conn.close()
            filler.journal.close()
        return report
    finally:
        conn.close()


def _from_journal(engine, filler: _Filler, missing: list[str], report: EmbedReport) -> list[str]:
    """Write the journaled vectors of ``missing`` (paid by a process that died before its write)."""
    cache = getattr(engine, "cache", None)
    if cache is None or not missing:
        return missing
    rows = []
    # one bulk lookup first: a fresh fill's keys are almost all absent, and a get each cost ~0.9 s per 100,000
    candidates = cache.stored(missing) if hasattr(cache, "stored") else set(missing)
    for key in (k for k in missing if k in candidates):
        hit = cache.get(key)
        if hit is not None and hit.text:
            rows.append((key, hit.text))
    if rows:
        report.from_journal += len(filler.write(rows))
    found = {k for k, _ in rows}
    return [k for k in missing if k not in found]


def embed(connect: Callable[[], Any], engine, model_name: str, texts: list[str | None], *,
          dimensions: int | None = None, audit_schema: str = "llm_audit", **kwargs) -> list[list[float] | None]:
    """The vectors of ``texts`` in order (None for NULL or failed texts), filling what is missing."""
    embed_texts(connect, engine, model_name, texts, dimensions=dimensions, audit_schema=audit_schema, **kwargs)
    fp = embedding_fingerprint(embedding_config(engine, model_name), dimensions)
    keys = [embedding_key(fp, t) if t is not None else None for t in texts]
    conn = connect()
    try:
        found = fetch_vectors(conn, audit_schema, [k for k in keys if k])
    finally:
        conn.close()
    return [found.get(k) if k else None for k in keys]

