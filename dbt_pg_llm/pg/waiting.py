"""Waiting for keys another run claimed: the last step of a fill (decisions 0007, 0011, 0022).

A fill sets aside the keys it could not claim (``waiting``: key -> prompt). ``ClaimWaiter.wait``
polls until each is settled: answered by the other run (a late cache hit for us), put in a provider
batch by it (that batch's now), or taken over by us once the other run's lease has expired (its
heartbeat stopped, or its session and process are gone) and then requested like any claimed key.
It gives up after ``wait_timeout_s``: the keys left become dead letters of kind ``timeout``. While
it waits, the progress names who holds the keys (``Claims.claimers``).

The waiter owns no connection and writes nothing itself: the fill hands it its ``Claims`` and the
few fill steps it needs (flush, request, skip for budget, fail keys), so the one fill keeps one
place where answers are written.
"""
from __future__ import annotations

import time
from typing import Callable

from ..errors import ErrorKind

__all__ = ["ClaimWaiter"]

MAX_POLL_S = 2.0  # the poll backs off from poll_s to this


class ClaimWaiter:
    """Waits for one fill's set-aside keys (see the module docstring)."""

    def __init__(self, claims, report, progress, column_name: str, *, poll_s: float, wait_timeout_s: float):
        self.claims, self.report, self.progress = claims, report, progress
        self.column_name = column_name
        self.poll_s, self.wait_timeout_s = poll_s, wait_timeout_s

    def wait(self, waiting: dict[str, str], *, flush: Callable[[], None],
             request: Callable[[dict[str, str]], None], skip_for_budget: Callable[[list[str]], None],
             fail_keys: Callable[[list[str], ErrorKind, str], None]) -> None:
        """Settle every key of ``waiting`` (emptied as keys settle). ``request(prompts)`` requests
        keys taken over; ``flush()`` writes what the fill holds before each poll, so our own answers
        and released claims are visible to the other run."""
        try:
            self._loop(waiting, flush, request, skip_for_budget, fail_keys)
        finally:
            self.report.waiting_keys = len(waiting)
            if not waiting:
                self.report.waiting_on = []

    def _loop(self, waiting, flush, request, skip_for_budget, fail_keys) -> None:
        rep = self.report
        deadline = time.monotonic() + self.wait_timeout_s
        delay = self.poll_s
        announced = False  # the first waiting line goes out at once, later ones every few seconds
        while waiting:
            if rep.stopped == "error":
                return  # failing anyway: don't wait
            flush()
            done, batched = self.claims.settled(list(waiting))
            if done:
                self.claims.log_late_hits(done, self.column_name)
            for key in done + batched:  # a key the other run put in a provider batch is that batch's now
                waiting.pop(key, None)
            if not waiting:
                return
            mine = self.claims.take_over(list(waiting))
            if mine:
                prompts = {k: waiting.pop(k) for k in mine}
                rep.waiting_keys, rep.waiting_on = len(waiting), []  # ours now
                if rep.stopped == "max_cost":
                    self.claims.release(mine)
                    skip_for_budget(mine)
                else:
                    request(prompts)
                delay = self.poll_s
                continue
            if time.monotonic() >= deadline:
                fail_keys(list(waiting), ErrorKind.TIMEOUT,
                          f"gave up after {self.wait_timeout_s:.0f}s waiting for another run that "
                          "claimed this key to answer it")
                waiting.clear()
                return
            rep.waiting_keys = len(waiting)
            if not announced or self.progress.due():
                rep.waiting_on = self.claims.claimers(list(waiting))
            self.progress.emit(force=not announced)
            announced = True
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL_S)
