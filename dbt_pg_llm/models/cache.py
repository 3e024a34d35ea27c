"""ResultCache: pay for each distinct request once.

Keys come from ``dbt_pg_llm.models.keys.cache_key`` (this module never computes them). Entries are
kept by a backend of ``journal.py``: their form (``CacheEntry``), ``MemoryBackend``, ``DiskJournal``.

* ``get(key)`` returns the stored output as a *cache hit*: ``cached=True``, ``cost_usd=0.0``,
  ``latency_ms=0.0`` (nothing was paid or waited for this time); the original cost stays in the
  entry (``get_entry(key).original_cost_usd``) for the "saved" figure of the metrics.
* ``put(key, output)`` stores successful, freshly paid outputs only: errors are never cached
  (a timeout today must not become a NULL forever) and hits are not re-stored.
* ``get_or_compute(key, compute)`` is single-flight: concurrent callers of one key share one
  ``compute()``; the first caller gets the paid output, the others a hit-style copy (they paid
  nothing, so metrics do not count the cost twice). A failed result goes to every waiter but is
  not stored, so the next call tries again. The computation runs in its own task: cancelling one
  caller does not cancel it for the others, and a paid answer is stored even if all gave up.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterator, Mapping

from .journal import CacheBackend, CacheEntry, JournalError, MemoryBackend
from .model_io import ModelOutput

__all__ = ["ResultCache", "max_unjournaled"]

log = logging.getLogger("dbt_pg_llm")


def max_unjournaled(max_concurrency: int) -> int:
    """How many paid answers of one model may be unkept at once (in flight, or received and waiting
    for the journal's group commit): ``max_concurrency`` plus an eighth of it, rounded up. The
    eighth is what arrives during one 5 ms commit delay at full concurrency when a call takes
    40 ms or more (model calls take far longer), so the pool, not this bound, is what limits
    throughput; with no headroom at all, slots idle through every commit delay (measured at
    concurrency 64 and 100 ms: 0.96x instead of 1.04-1.07x the raw aiohttp client's rate)."""
    return max_concurrency + -(-max_concurrency // 8)


class ResultCache:
    """Paid answers by request key, over a backend (a ``DiskJournal`` to keep them), with
    single-flight: concurrent callers of one key make one request.

    ``commit_delay_s``: answers are written in groups (decision 0004); a group is committed this
    long after its first answer, or at once when it holds ``commit_max`` answers. Each caller gets
    its answer only after the commit, so the delay costs latency (a few ms on calls of 100 ms and
    more), never durability; a SQLite commit costs several times a row, so fewer, larger groups
    save CPU when answers arrive a few per loop iteration. 0: the next loop iteration."""

    def __init__(self, backend: CacheBackend | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.time, commit_delay_s: float = 0.005, commit_max: int = 256):
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 seconds, or None for entries that never expire")
        if commit_delay_s < 0 or commit_max < 1:
            raise ValueError("commit_delay_s must be >= 0 and commit_max >= 1")
        self.commit_delay_s = commit_delay_s
        self.commit_max = commit_max
        self.backend = backend if backend is not None else MemoryBackend()
        self.ttl_s = ttl_s
        self._clock = clock
        self._inflight: dict[str, asyncio.Future] = {}
        self._gates: dict[str, tuple[int, Any, asyncio.Semaphore]] = {}  # durability_gate's, per model
        self._pending_writes: tuple[list, asyncio.Future] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self.write_error: JournalError | None = None  # the first failed write; later ones are counted
        self.failed_writes = 0

    @property
    def durable(self) -> bool:
        """True when stored answers outlive this process (a journal on disk that still writes)."""
        return getattr(self.backend, "directory", None) is not None and self.write_error is None

    def holds(self, keys) -> list[str]:
        """Those of ``keys`` stored on disk (to say truthfully what a failed fill kept); [] if the
        backend is not durable or cannot even be read."""
        if getattr(self.backend, "directory", None) is None:
            return []
        try:
            return [k for k in keys if self.backend.get(k) is not None]
        except Exception:
            return []

    def stored(self, keys) -> set[str]:
        """Those of ``keys`` with an entry in the backend, valid or not (``get`` decides): in bulk
        where the backend can (``DiskJournal.stored``), else key by key."""
        keys = list(keys)
        bulk = getattr(self.backend, "stored", None)
        return bulk(keys) if bulk is not None else {k for k in keys if self.backend.get(k) is not None}

    # -- synchronous API -------------------------------------------------------------------------
    def get_entry(self, key: str) -> CacheEntry | None:
        """The stored entry, whether valid and fresh or not (for inspection and replay)."""
        data = self.backend.get(key)
        return CacheEntry.from_dict(data) if data is not None else None

    def get(self, key: str, not_before: float | None = None) -> ModelOutput | None:
        """A hit (cached=True, cost 0, latency 0), or None when absent, invalidated or expired --
        or, with ``not_before`` (epoch seconds, this cache's clock), created at or before it."""
        entry = self.get_entry(key)
        if entry is None or not entry.valid or entry.expired(self._clock()):
            return None
        if not_before is not None and entry.created_at <= not_before:
            return None
        return entry.output

    def put(self, key: str, output: ModelOutput) -> bool:
        """Store a successful, paid output; returns False (and stores nothing) for a failed output
        or one that is itself a cache hit."""
        if not output.ok or output.cached:
            return False
        self.backend.set(key, self._entry(output))
        return True

    def put_many(self, items) -> int:
        """``put`` for many (key, output) pairs in one backend transaction (a batch's result file is
        journaled this way before it is applied); returns how many were stored."""
        rows = [(key, self._entry(output)) for key, output in items if output.ok and not output.cached]
        if rows:
            self.backend.set_many(rows)
        return len(rows)

    def _entry(self, output: ModelOutput) -> dict:
        """The stored form of a paid output, stamped now and with this cache's TTL."""
        now = self._clock()
        return CacheEntry.serialize(output, now, now + self.ttl_s if self.ttl_s is not None else None)

    def invalidate(self, key: str) -> bool:
        """Mark the entry invalid (kept for audit, never served again); False if there is none."""
        data = self.backend.get(key)
        if data is None:
            return False
        data["valid"] = False
        self.backend.set(key, data)
        return True

    def invalidate_older(self, cutoffs: Mapping[str, float]) -> int:
        """Invalidate each key's entry created at or before its cutoff (epoch seconds, this cache's
        clock): the time the database last invalidated the key, which another machine may have done
        without this journal knowing (decision 0024). One transaction; returns how many."""
        stale = []
        for key, cutoff in cutoffs.items():
            data = self.backend.get(key)
            if data is not None and data.get("valid", True) and float(data.get("created_at") or 0.0) <= cutoff:
                data["valid"] = False
                stale.append((key, data))
        if stale:
            self.backend.set_many(stale)
        return len(stale)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self.backend)

    def keys(self) -> Iterator[str]:
        return self.backend.keys()

    def close(self) -> None:
        self.backend.close()

    def durability_gate(self, name: str, limit: int) -> asyncio.Semaphore | None:
        """The semaphore that keeps at most ``max_unjournaled(limit)`` calls of ``name`` (``limit``:
        the model's ``max_concurrency``) between "about to be sent" and "answer on disk" (decision
        0021): answers waiting for the group commit cannot pile up behind a stalled loop while new
        requests go out, so a ``kill -9`` leaves at most that many paid answers unkept, whatever the
        load. None when nothing outlives the process (no journal on disk, or it stopped writing):
        nothing to wait for. Call it on the loop."""
        if not self.durable:
            return None
        loop = asyncio.get_running_loop()
        found = self._gates.get(name)
        if found is None or found[0] != limit or found[1] is not loop:  # new, reconfigured, or another loop
            found = self._gates[name] = (limit, loop, asyncio.Semaphore(max_unjournaled(limit)))
        return found[2]

    # -- single-flight ---------------------------------------------------------------------------
    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[ModelOutput]], *,
                             detach: bool = True, gate: asyncio.Semaphore | None = None) -> ModelOutput:
        """``detach=False``: the caller runs in a task of its own that nobody cancels (the engine's
        map), so the computation runs in it directly instead of in a task of its own -- a task, a
        shield and their callbacks less per call. ``gate`` (``durability_gate``): held from before
        ``compute()`` until its answer is stored; hits and joiners never take it."""
        hit = self.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is not None:
            return _shared_copy(await asyncio.shield(task))
        if not detach:
            return await self._compute_in_caller(key, compute, gate)
        task = asyncio.ensure_future(self._compute_and_store(key, compute, gate))
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task)

    async def _compute_in_caller(self, key: str, compute: Callable[[], Awaitable[ModelOutput]],
                                 gate: asyncio.Semaphore | None = None) -> ModelOutput:
        shared = self._inflight[key] = asyncio.get_running_loop().create_future()  # what joiners wait for
        try:
            output = await self._compute_and_store(key, compute, gate)
        except BaseException as exc:
            if not shared.done():
                if isinstance(exc, asyncio.CancelledError):
                    shared.cancel()
                else:
                    shared.set_exception(exc)
                    shared.exception()  # retrieved: a failure nobody joined is not an "unretrieved" one
            raise
        else:
            shared.set_result(output)
            return output
        finally:
            if self._inflight.get(key) is shared:
                del self._inflight[key]

    async def _compute_and_store(self, key: str, compute: Callable[[], Awaitable[ModelOutput]],
                                 gate: asyncio.Semaphore | None = None) -> ModelOutput:
        if gate is not None:
            async with gate:
                return await self._compute_and_store(key, compute)
        output = await compute()
        if output.ok and not output.cached:
            try:
                await self._store(key, output)
            except Exception as exc:  # the answer is still good for this run, but not kept: say so ONCE
                self.failed_writes += 1
                if self.write_error is None:
                    self.write_error = JournalError(getattr(self.backend, "directory", None), exc)
                    log.error("%s; paid answers are no longer journaled", self.write_error)
        return output

    async def _store(self, key: str, output: ModelOutput) -> None:
        """Group commit: answers join the open group, which is written in one transaction
        ``commit_delay_s`` after its first answer (or once it holds ``commit_max``); each caller
        resumes only once its answer is stored. The callers are computations nobody cancels
        (detached tasks, or the engine's map tasks), so they await the shared future without a
        shield each."""
        entry = self._entry(output)
        if self._pending_writes is None:
            loop = asyncio.get_running_loop()
            self._pending_writes = ([], loop.create_future())
            if self.commit_delay_s:
                self._flush_timer = loop.call_later(self.commit_delay_s, self._flush_writes)
            else:
                self._flush_timer = loop.call_soon(self._flush_writes)
        items, written = self._pending_writes
        items.append((key, entry))
        if len(items) >= self.commit_max:
            self._flush_writes()  # the caller's own entry is in: written.done() before the await
        await written

    def _flush_writes(self) -> None:
        items, written = self._pending_writes
        self._pending_writes = None
        self._flush_timer.cancel()  # when the group filled up before its timer
        self._flush_timer = None
        try:
            self.backend.set_many(items)
        except Exception as exc:
            if not written.done():  # done: cancelled, the loop is stopping
                written.set_exception(exc)
        else:
            if not written.done():
                written.set_result(None)

    def _forget(self, key: str, task: asyncio.Future) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark as retrieved: the callers that still wait get it via shield


def _shared_copy(output: ModelOutput) -> ModelOutput:
    """What a caller that joined another caller's request gets: it paid nothing and waited only
    for someone else's request, so successes look like cache hits; failures stay failures."""
    if output.ok:
        return replace(output, value=copy.deepcopy(output.value), cached=True, cost_usd=0.0,
                       latency_ms=0.0, attempts=0, saved_cost_usd=output.cost_usd)
    return replace(output, cost_usd=0.0, attempts=0)
