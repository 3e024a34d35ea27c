"""The shared run budget: what one dbt invocation has paid, for ``max_cost_usd``.

One process-wide ``_budgets`` keyed by (database, schema, run_id): the concurrent fills of one
dbt invocation (dbt threads) add to it live and stop once it reaches ``max_cost_usd``; a run seen
for the first time in this process starts from its ``llm_runs`` row (a retry continues the sum).
"""
from __future__ import annotations

import threading
from typing import Callable


class _Budgets:
    """Paid cost per (database, schema, run_id) in this process: concurrent fills of one dbt
    invocation (dbt threads) share it live; a run seen for the first time starts from llm_runs."""

    def __init__(self):
        self._spent: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def start(self, ident: tuple, load: Callable[[], float]) -> None:
        with self._lock:
            if ident in self._spent:
                return
        value = load()
        with self._lock:
            self._spent.setdefault(ident, value)

    def add(self, ident: tuple, amount: float) -> float:
        with self._lock:
            self._spent[ident] = self._spent.get(ident, 0.0) + amount
            return self._spent[ident]

    def spent(self, ident: tuple) -> float:
        with self._lock:
            return self._spent.get(ident, 0.0)


_budgets = _Budgets()
