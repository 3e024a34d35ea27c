"""The shared run budget: one ``SpendLimit`` per dbt invocation, for ``max_cost_usd_per_run``.

``run_budget(ident, cap, load)`` gives the process-wide SpendLimit of (database, schema, run_id):
the concurrent fills of one dbt invocation (dbt threads) reserve from the same limit, so together
they never exceed the cap. A run seen for the first time in this process starts from what its
``llm_runs`` row says it already paid (``load``): a dbt ``retry`` continues the sum.
"""
from __future__ import annotations

import threading
from typing import Callable

from ..spend import SpendLimit

__all__ = ["run_budget"]


class _RunBudgets:
    def __init__(self):
        self._limits: dict[tuple, SpendLimit] = {}
        self._lock = threading.Lock()

    def get(self, ident: tuple, cap_usd: float, load: Callable[[], float]) -> SpendLimit:
        with self._lock:
            limit = self._limits.get(ident)
        if limit is None:
            spent = load()  # outside the lock: a database round trip
            with self._lock:
                limit = self._limits.setdefault(ident, SpendLimit(cap_usd, spent))
        return limit


_budgets = _RunBudgets()


def run_budget(ident: tuple, cap_usd: float, load: Callable[[], float]) -> SpendLimit:
    """The SpendLimit every fill of run ``ident`` shares (created from ``load()`` the first time)."""
    return _budgets.get(ident, cap_usd, load)
