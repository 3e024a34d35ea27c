"""Engine: what the dbt adapter and Python models use. Registry + cache + failover + logs + metrics.

``acall`` checks the result cache (single-flight: concurrent callers of one key make one request),
then calls the model through its failover chain. Paid outputs go to the cache -- the diskcache
journal when configured -- before ``acall`` returns, so nothing paid for is lost if the caller
crashes or the database is down afterwards. Failed outputs are never cached.

The sync facade (``call``, ``submit``, ``map_unordered``) runs everything on one shared loop thread
so every dbt thread shares one HTTP pool, one set of rate limits and one cache.

A ``spend_limit`` (spend.py) passed to ``acall`` / ``call`` / ``submit`` / ``map_unordered`` is a
hard cap: each HTTP attempt reserves its worst-case cost before it is sent.
"""
from __future__ import annotations

import concurrent.futures
import functools
import itertools
import queue
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from .cache import ResultCache
from .failover import Failover
from .gc_policy import bulk_gc
from .keys import request_key
from .lease import SendLease, sending_for
from .logs import LogDispatcher, ModelLog
from .metrics import MetricsRegistry
from .model import Model
from .model_io import ModelInput, ModelOutput
from .packed_calls import apacked, packed_groups
from .registry import ModelRegistry
from .runtime import LoopThread, shared_loop
from .spend import SpendLimit, using_limit

__all__ = ["Engine"]

SETTLE_TIMEOUT_S = 120.0  # how long a stopped map_unordered waits for its paid calls still in flight


class Engine:
    def __init__(self, registry: ModelRegistry | Iterable[Model] = (), *, cache: ResultCache | None = None,
                 sinks: Iterable = (), loop: LoopThread | None = None):
        self.registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        self.cache = cache
        self.log = LogDispatcher(sinks)
        self.metrics = MetricsRegistry()
        self._loop = loop
        self._failover: dict[str, Failover] = {}  # per model name; cleared when models change
        for model in self.registry:
            self._attach(model)

    def _attach(self, model: Model) -> Model:
        if model.log is not self.log:
            model.log = self.log
            model.metrics = self.metrics.for_model(model.name)
        return model

    def register(self, model: Model) -> Model:
        self.registry.register(model)
        self._failover.clear()
        return self._attach(model)

    def _failover_for(self, model_name: str) -> Failover:
        failover = self._failover[model_name] = Failover.for_model(self.registry, model_name)
        for name in failover.backup_models:
            self.model(name)  # attach backups so their logs and metrics are ours too
        return failover

    def model(self, name: str) -> Model:
        return self._attach(self.registry.get(name))

    def key_of(self, model_name: str, inp: ModelInput) -> str:
        return request_key(self.model(model_name).config, inp)

    # -- async core ----------------------------------------------------------------------------
    async def acall(self, model_name: str, inp: ModelInput, *, context: dict | None = None,
                    use_cache: bool = True, key: str | None = None,
                    spend_limit: SpendLimit | None = None) -> ModelOutput:
        """Never raises ModelError: a failure is an output with ``error_kind`` set.

        ``spend_limit``: every request made for this call (retries, failover, strategy members)
        reserves its worst case there before it is sent; one that does not fit is not sent and the
        output fails with ``ErrorKind.BUDGET`` (spend.py). None: the caller's active limit, if any."""
        with using_limit(spend_limit):
            return await self._acall(model_name, inp, context=context, use_cache=use_cache, key=key)

    async def _map_call(self, model_name: str, inp: ModelInput, *, context: dict | None = None,
                        spend_limit: SpendLimit | None = None) -> ModelOutput:
        """``acall`` as the map's own tasks make it: nobody can cancel them (see _start_chunk), so
        the cache computes in them directly (``detach=False``)."""
        with using_limit(spend_limit):
            return await self._acall(model_name, inp, context=context, use_cache=True, key=None, detach=False)

    async def _acall(self, model_name: str, inp: ModelInput, *, context: dict | None, use_cache: bool,
                     key: str | None, detach: bool = True) -> ModelOutput:
        model = self.model(model_name)
        inp = inp.with_defaults(model.config.temperature, model.config.max_tokens)
        key = key or request_key(model.config, inp)
        failover = self._failover.get(model_name)
        if failover is None or failover.backup_models != model.config.fallbacks:  # configure() may change them
            failover = self._failover_for(model_name)

        async def compute() -> ModelOutput:
            return await failover.acall(self.registry, model_name, inp, context=context, input_hash=key)

        if self.cache is None or not use_cache:
            return await compute()
        # the model's max_concurrency bounds the requests not yet journaled too, not only those in flight;
        # a strategy sends nothing itself (its members' answers are journaled by their own calls)
        gate = (self.cache.durability_gate(model.name, model.config.max_concurrency)
                if isinstance(model, Model) else None)
        output = await self.cache.get_or_compute(key, compute, detach=detach, gate=gate)
        if output.cached:
            self.record_hit(model, key, output, context)
        return output

    def record_hit(self, model: Model, key: str, output: ModelOutput, context: dict | None) -> None:
        saved = output.saved_cost_usd
        model.metrics.record(output)
        if self.log.sinks:
            self.log.emit(ModelLog(timestamp=datetime.now(timezone.utc), model=model.name, operation="call",
                                   input_hash=key, attempt=0, cached=True, cost_usd=0.0,
                                   context={**(context or {}), "saved_cost_usd": saved}))

    async def aclose(self) -> None:
        for model in self.registry:
            await model.aclose()

    # -- sync facade ---------------------------------------------------------------------------
    @property
    def loop(self) -> LoopThread:
        if self._loop is None:
            self._loop = shared_loop()
        return self._loop

    def call(self, model_name: str, inp: ModelInput, **kwargs) -> ModelOutput:
        return self.loop.run(self.acall(model_name, inp, **kwargs))

    def submit(self, model_name: str, inp: ModelInput, **kwargs) -> "concurrent.futures.Future[ModelOutput]":
        return self.loop.submit(self.acall(model_name, inp, **kwargs))

    def map_unordered(self, model_name: str, items: Iterable[tuple[Any, ModelInput]], *, window: int = 256,
                      context: dict | None = None, spend_limit: SpendLimit | None = None,
                      lease: SendLease | None = None, _call=None) -> Iterator[tuple[Any, ModelOutput]]:
        """Yield (tag, output) as calls complete, with at most ``window`` in flight (and at least
        3/4 of it while inputs remain: make it a few times the model's ``max_concurrency``).

        ``spend_limit``: as in ``acall``, shared by every call of the map (and whoever else uses it).
        ``lease``: each request for an item is sent only if the lease admits its tag's keys when the
        model's pool gives it a slot (lease.py); one it drops fails with ``ErrorKind.CLAIM_LOST``.

        The input iterator is pulled lazily, so a server-side cursor can feed millions of rows in
        constant memory. Stopping the iteration early submits nothing more; calls already in flight
        finish on the loop and land in the cache/journal (they may be paid for: never cancel them).
        """
        if window < 1:
            raise ValueError("window must be >= 1")
        # Inputs cross to the loop thread a chunk at a time and results come back through one queue
        # that is drained in bursts: per-item cross-thread futures (or concurrent.futures.wait, which
        # re-scans every pending future) cost more CPU than the HTTP request itself.
        results: queue.SimpleQueue = queue.SimpleQueue()
        in_flight = [0]  # shared with _pump, read by _settle
        with bulk_gc():  # fewer GC passes while thousands of calls stream (gc_policy.py)
            try:
                yield from self._pump(model_name, iter(items), window, context, results, in_flight, spend_limit,
                                      _call or self._map_call, lease)
            finally:
                self._settle(results, in_flight[0])

    def map_packed(self, model_name: str, items: Iterable[tuple[Any, ModelInput]], *, batch_size: int,
                   window: int = 256, context: dict | None = None, spend_limit: SpendLimit | None = None,
                   lease: SendLease | None = None) -> Iterator[tuple[Any, ModelOutput]]:
        """``map_unordered`` whose inputs go ``batch_size`` at a time into packed requests (batch.py).

        Per row, as ``acall``: a cached key is a hit (not requested); each paid answer is journaled
        before it is yielded; a failed row is a failed output. ``window`` counts rows in flight.
        Packed requests and their fallback single calls go to the model itself, not its failover chain.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        groups = packed_groups(iter(items), batch_size)
        for _tags, rows in self.map_unordered(model_name, groups, window=max(1, window // batch_size),
                                              context=context, spend_limit=spend_limit, lease=lease,
                                              _call=self._apacked):
            yield from rows

    async def _apacked(self, model_name: str, rows: list, *, context: dict | None = None,
                       spend_limit: SpendLimit | None = None) -> list:
        model = self.model(model_name)
        gate = self.cache.durability_gate(model.name, model.config.max_concurrency) if self.cache is not None else None
        with using_limit(spend_limit):
            if gate is None:
                return await apacked(self, model, rows, context)
            async with gate:  # one slot per packed request, until its rows are journaled (decision 0021)
                return await apacked(self, model, rows, context)

    def _settle(self, results: queue.SimpleQueue, pending: int) -> None:
        """When the consumer stops early (an error, a full database): wait for the calls still in
        flight. They are paid for; each lands in the cache/journal before it reports, so waiting
        is what keeps them (a process exiting right after would drop them on the floor)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while pending > 0:
            try:
                pending -= len(results.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                return
            if time.monotonic() >= deadline:
                return

    def _pump(self, model_name, source, window, context, results, counter, spend_limit, call, lease=None):
        chunk_size = max(1, window // 4)
        in_flight = 0
        exhausted = False
        while True:
            # Refill a whole chunk at a time: topping up after every answer crossed to the loop
            # thread once per answer (a wake-up of each thread, ~0.05 ms of CPU). In flight stays
            # between 3/4 of the window and the window, which is why it is a few times the pool's size.
            while not exhausted and window - in_flight >= chunk_size:
                chunk = list(itertools.islice(source, chunk_size))
                if not chunk:
                    exhausted = True
                    break
                self.loop.loop.call_soon_threadsafe(self._start_chunk, model_name, chunk, context, results,
                                                    spend_limit, call, lease)
                in_flight += len(chunk)
                counter[0] = in_flight
            if not in_flight:
                return
            ready = results.get()
            while True:
                try:
                    ready += results.get_nowait()
                except queue.Empty:
                    break
            in_flight -= len(ready)
            counter[0] = in_flight
            for tag, output in ready:
                if isinstance(output, BaseException):
                    raise output
                yield tag, output

    def _start_chunk(self, model_name: str, chunk: list, context: dict | None, results: queue.SimpleQueue,
                     spend_limit: SpendLimit | None = None, call=None, lease: SendLease | None = None) -> None:
        """Runs on the loop thread: start one task per input; each reports to ``results``. With a
        lease, each task runs in a context naming its tag's keys (what the lease admits)."""
        call = call or self._map_call
        loop = self.loop.loop
        batch = _ResultBatch(loop, results)
        for tag, inp in chunk:
            coro = call(model_name, inp, context=context, spend_limit=spend_limit)
            task = loop.create_task(coro if lease is None else sending_for(lease, tag, coro))
            task.add_done_callback(functools.partial(batch.report, tag))

    def close(self) -> None:
        try:
            self.loop.run(self.aclose(), timeout=10)
        except Exception:  # closing is best effort: the process may be exiting
            pass


class _ResultBatch:
    """Results of one chunk cross to the consuming thread as one list per loop iteration, not one
    queue item each: every ``put`` may wake the consumer, which then competes with the loop thread
    for the GIL (measured: a quarter of the loop thread's time at concurrency 256 went to waiting
    for the GIL in socket sends while the consumer woke once per answer)."""

    __slots__ = ("_loop", "_results", "_ready")

    def __init__(self, loop, results: queue.SimpleQueue):
        self._loop = loop
        self._results = results
        self._ready: list | None = None

    def report(self, tag, task) -> None:
        if task.cancelled():
            item = (tag, RuntimeError("call cancelled (the engine loop was stopped)"))
        else:
            error = task.exception()
            item = (tag, error if error is not None else task.result())
        if self._ready is None:
            self._ready = []
            self._loop.call_soon(self._flush)
        self._ready.append(item)

    def _flush(self) -> None:
        ready, self._ready = self._ready, None
        self._results.put(ready)
