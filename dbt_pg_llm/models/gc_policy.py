"""Garbage collection while LLM columns fill: fewer young collections, long-lived heaps frozen.

Every call allocates a few dozen objects the cyclic GC tracks (tasks, futures, dicts, the answer)
that live for one round trip. With CPython's default generation-0 threshold (700 net allocations)
thousands of calls per second trigger a young collection every few calls, and every ~100 of those a
full one that scans everything alive -- measured in bench/throughput.py at concurrency 512: 0.69 s
of garbage collection in a 10,000-request run (the engine at 0.42 ms CPU per request, 0.58x raw
aiohttp); with generation 0 at 20,000, 0.15 s (0.35 ms, 0.67x).

``bulk_gc()`` raises the generation-0 threshold to ``BULK_GEN0`` while at least one bulk stream
(``Engine.map_unordered``) runs in the process, and puts the previous thresholds back when the last
one ends. Cycles are still collected, in larger batches (a few MB of young objects at most).
``DBT_PG_LLM_BULK_GC=0`` leaves the thresholds alone.

``freeze_long_lived_heap()`` (the adapter calls it when the first LLM fill starts; dbt has parsed
by then) runs once per process: a young collection (generations 0 and 1), then ``gc.freeze()``,
which moves every object tracked so far -- dbt's parsed project: the manifest, compiled nodes,
mashumaro's generated classes -- to the permanent generation: still freed by reference counting,
no longer scanned for cycles. Measured (bench/dbt_run.py, 10,000 requests at concurrency 256): 10
full collections over that heap took 1.35 s and the run reached 0.52-0.62 of the C/L ceiling;
frozen first, 0.18 s and 0.92 (the dbt process's CPU per request 0.51 -> 0.34 ms). Not a full
collection first: it scanned the whole heap for 85 ms of every enriching dbt run (more in a bigger
project) to find ~2,300 unreachable objects (the young one finds ~1,400 in 2 ms); those few are
frozen with the rest, a few hundred kB for the life of the process.
``DBT_PG_LLM_FREEZE_HEAP=0`` turns it off. Decision 0020.
"""
from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Iterator

__all__ = ["bulk_gc", "BULK_GEN0", "freeze_long_lived_heap"]

BULK_GEN0 = 20_000

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None
_frozen = False


def _turned_off(variable: str) -> bool:
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    global _active, _saved
    if _turned_off("DBT_PG_LLM_BULK_GC"):
        yield
        return
    with _lock:
        _active += 1
        if _active == 1:
            _saved = gc.get_threshold()
            if _saved[0] and _saved[0] < BULK_GEN0:  # 0: collection is off; a higher one is the user's
                gc.set_threshold(BULK_GEN0, *_saved[1:])
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                if gc.get_threshold()[0] == BULK_GEN0:  # not changed by someone else meanwhile
                    gc.set_threshold(*_saved)
                _saved = None


def freeze_long_lived_heap() -> int:
    """Freeze the objects alive now, once per process; returns how many (0: done before, or off)."""
    global _frozen
    with _lock:
        if _frozen or _turned_off("DBT_PG_LLM_FREEZE_HEAP"):
            return 0
        _frozen = True
        gc.collect(1)  # the young garbage; a full collection here cost 85 ms for ~2,300 objects
        gc.freeze()
        return gc.get_freeze_count()
