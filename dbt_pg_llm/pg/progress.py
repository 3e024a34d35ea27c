"""When a fill says how it is doing, and what it has seen of retries and rate limits.

* ``ProgressPacer``: a progress line at most every ``every_s`` seconds (10), or sooner when another
  10% of the keys to request is done, so a long fill says something regularly and a short one
  does not flood the log.
* ``AttemptCounter``: a log sink (added to the engine's dispatcher for the duration of one fill)
  counting the fill's own retry attempts and HTTP 429 answers, recognised by the fill's call context
  (run, node, operation); the engine's shared sinks are drained by whichever fill flushes first, so
  they cannot be counted there.
* ``FillProgress``: one fill's progress events, paced, with the elapsed time, the retries and 429s
  seen and the ETA filled into its FillReport before each one goes to the callback.
* ``eta_s``: the remaining keys at the keys-per-second observed since the first request, which
  already includes the time lost to retries and to 429 back-off, so slow-downs lengthen the ETA.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["ProgressPacer", "AttemptCounter", "FillProgress", "eta_s", "PROGRESS_EVERY_S"]

log = logging.getLogger("dbt_pg_llm")

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


class FillProgress:
    """The progress events of one fill (``callback(report.as_progress())``; None: no events).

    ``spent()`` is what the run's spend limit has spent, or None when it has none."""

    def __init__(self, callback: Callable[[dict], None] | None, report, context: dict,
                 spent: Callable[[], float | None]):
        self.callback = callback
        self.report = report
        self.spent = spent
        self.started = time.monotonic()
        self.pacer = ProgressPacer()
        self.attempts = AttemptCounter(context)  # add it to the engine's log dispatcher while filling
        self.first_submit: float | None = None

    def submitted(self) -> None:
        """A request is about to go out (the ETA counts from the first)."""
        if self.first_submit is None:
            self.first_submit = time.monotonic()

    def due(self) -> bool:
        """Would a paced event go out now (for work worth doing only then)?"""
        return self.callback is not None and time.monotonic() - self.pacer.last >= self.pacer.every_s

    def emit(self, force: bool = False) -> None:
        """An event at most every 10 s, or per 10% of the keys to request (``ProgressPacer``)."""
        if self.callback is None:
            return
        now = time.monotonic()
        rep = self.report
        if force:
            self.pacer.mark(rep.requests_done, rep.requests_total, now)
        elif not self.pacer.due(rep.requests_done, rep.requests_total, now):
            return
        rep.elapsed_s = now - self.started
        rep.retries, rep.rate_limited = self.attempts.retries, self.attempts.rate_limited
        rep.eta_s = self.eta(now)
        rep.budget_spent_usd = self.spent()
        try:
            self.callback(rep.as_progress())
        except Exception:  # a progress printer must never fail a run
            log.exception("progress callback failed")

    def eta(self, now: float) -> float | None:
        """At the keys/s observed since the first request: retries and 429 back-off included."""
        rep = self.report
        return eta_s(max(rep.requests_total - rep.requests_done, 0), rep.requests_done,
                     None if self.first_submit is None else max(now - self.first_submit, 1e-6))
