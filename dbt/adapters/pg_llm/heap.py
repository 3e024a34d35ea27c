"""Keep Python's cyclic garbage collector off dbt's parsed project while LLM columns fill.

A dbt process holds its parsed project -- the manifest, compiled nodes, mashumaro's generated
classes: a few hundred thousand objects that live until the process ends. Every full (generation
2) collection traverses all of them. A fill allocates objects that survive the young generations
(answers in flight, futures, rows waiting for COPY), so full collections come every ~1,000 requests,
~135 ms each. Measured (bench/dbt_run.py, 10,000 requests at concurrency 256): 10 full collections
took 1.35 s, and the run reached 0.52-0.62 of the C/L ceiling; with the heap frozen first, 0.18 s
and 0.92 (the dbt process's CPU per request 0.51 -> 0.34 ms). Decision 0020.

``freeze_long_lived_heap()`` runs once per process, when the first LLM fill starts (dbt has
parsed by then): one full collection (so no garbage is frozen), then ``gc.freeze()``, which moves
every object tracked so far to the permanent generation -- still freed by reference counting, no
longer scanned for cycles. ``DBT_PG_LLM_FREEZE_HEAP=0`` turns it off.
"""
from __future__ import annotations

import gc
import os
import threading

__all__ = ["freeze_long_lived_heap"]

_done = False
_lock = threading.Lock()


def freeze_long_lived_heap() -> int:
    """Freeze the objects alive now, once per process; returns how many (0: done before, or off)."""
    global _done
    with _lock:
        if _done or os.environ.get("DBT_PG_LLM_FREEZE_HEAP", "1").strip().lower() in ("0", "false", "no", "off"):
            return 0
        _done = True
        gc.collect()
        gc.freeze()
        return gc.get_freeze_count()
