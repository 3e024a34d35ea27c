"""Fewer garbage-collector passes while the engine streams many calls.

Every call allocates a few dozen objects the cyclic GC tracks (tasks, futures, dicts, the answer)
that live for one round trip. With CPython's default generation-0 threshold (700 net allocations)
thousands of calls per second trigger a young collection every few calls, and every ~100 of those a
full one that scans everything alive -- measured in bench/throughput.py at concurrency 512: 0.69 s
of garbage collection in a 10,000-request run (the engine at 0.42 ms CPU per request, 0.58x raw
aiohttp); with generation 0 at 20,000, 0.15 s (0.35 ms, 0.67x).

``bulk_gc()`` raises the generation-0 threshold to ``BULK_GEN0`` while at least one bulk stream
(``Engine.map_unordered``) runs in the process, and puts the previous thresholds back when the last
one ends. Cycles are still collected, in larger batches (a few MB of young objects at most).
``DBT_PG_LLM_BULK_GC=0`` leaves the thresholds alone. Decision 0020.
"""
from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Iterator

__all__ = ["bulk_gc", "BULK_GEN0"]

BULK_GEN0 = 20_000

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    global _active, _saved
    if os.environ.get("DBT_PG_LLM_BULK_GC", "1").strip().lower() in ("0", "false", "no", "off"):
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
