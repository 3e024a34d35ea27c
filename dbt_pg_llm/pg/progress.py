"""When a fill says how it is doing, and what it has seen of retries and rate limits.

* ``ProgressPacer``: a progress line at most every ``every_s`` seconds (10), or sooner when another
  10% of the keys to request is done, so a long fill says something regularly and a short one
  does not flood the log.
* ``AttemptCounter``: a log sink (added to the engine's dispatcher for the duration of one fill)
  counting the fill's own retry attempts and HTTP 429 answers, recognised by the fill's call context
  (run, node, operation); the engine's shared sinks are drained by whichever fill flushes first, so
  they cannot be counted there.
* ``eta_s``: the remaining keys at the keys-per-second observed since the first request, which
  already includes the time lost to retries and to 429 back-off, so slow-downs lengthen the ETA.
"""
from __future__ import annotations

import threading
import time

__all__ = ["ProgressPacer", "AttemptCounter", "eta_s", "PROGRESS_EVERY_S"]

PROGRESS_EVERY_S = 10.0


class ProgressPacer:
    def __init__(self, every_s: float = PROGRESS_EVERY_S, steps: int = 10):
        self.every_s = every_s
        self.steps = steps
        self.last = 0.0
        self.last_step = 0

    def due(self, done: int, total: int, now: float | None = None) -> bool:
        """True (and remembered as emitted) when ``every_s`` passed or a new 10% step was reached."""
        now = time.monotonic() if now is None else now
        step = (done * self.steps) // total if total > 0 else 0
        if now - self.last >= self.every_s or step > self.last_step:
            self.mark(done, total, now)
            return True
        return False

    def mark(self, done: int, total: int, now: float | None = None) -> None:
        self.last = time.monotonic() if now is None else now
        self.last_step = (done * self.steps) // total if total > 0 else 0


class AttemptCounter:
    """Counts retries (attempt > 1) and 429 answers of the calls made with ``context``."""

    def __init__(self, context: dict):
        self.match = (context.get("run_id"), context.get("node_id"), context.get("operation"))
        self.retries = 0
        self.rate_limited = 0
        self._lock = threading.Lock()

    def emit(self, log) -> None:
        context = getattr(log, "context", None) or {}
        if (context.get("run_id"), context.get("node_id"), context.get("operation")) != self.match \
                or getattr(log, "cached", False):
            return
        with self._lock:
            if (getattr(log, "attempt", 1) or 1) > 1:
                self.retries += 1
            if getattr(log, "http_status", None) == 429 or getattr(log, "error_kind", None) == "rate_limited":
                self.rate_limited += 1


def eta_s(remaining: int, done: int, since_first_request_s: float | None) -> float | None:
    """Seconds left at the observed rate (None until something is done)."""
    if remaining <= 0:
        return 0.0
    if not done or since_first_request_s is None:
        return None
    return round(remaining * since_first_request_s / done, 1)
