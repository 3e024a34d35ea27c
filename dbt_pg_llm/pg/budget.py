"""The shared run budget: one ``SpendLimit`` per dbt invocation, for ``max_cost_usd_per_run``.

``run_spend_limit(conn, schema, run_id, cap)`` gives the process-wide SpendLimit of (database,
schema, run_id): the concurrent fills of one dbt invocation (dbt threads) and the provider batches
it submits reserve from the same limit, so together they never exceed the cap. A run seen for the
first time in this process starts from what its ``llm_runs`` row says it already paid: a dbt
``retry`` continues the sum.
"""
from __future__ import annotations

import threading
from typing import Callable

from ..spend import SpendLimit
from .migrations import db_identity, quote_ident

__all__ = ["run_spend_limit"]


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


def run_spend_limit(conn, schema: str, run_id: str, cap_usd: float) -> SpendLimit:
    """The SpendLimit every fill of run ``run_id`` shares (``conn``: any connection to the database)."""
    return _budgets.get(db_identity(conn, schema) + (run_id,), cap_usd, lambda: _paid_by_run(conn, schema, run_id))


def _paid_by_run(conn, schema: str, run_id: str) -> float:
    with conn.cursor() as cur:
        cur.execute(f"select cost_usd from {quote_ident(schema)}.llm_runs where run_id = %s", (run_id,))
        row = cur.fetchone()
    return float(row[0]) if row else 0.0
