"""The shared run budget: one ``SpendLimit`` per dbt invocation, for ``max_cost_usd_per_run``.

``run_spend_limit(conn, schema, run_id, cap)`` gives the process-wide SpendLimit of (database,
schema, run_id): the concurrent fills of one dbt invocation (dbt threads) and the provider batches
it submits reserve from the same limit, so together they never exceed the cap. A run seen for the
first time in this process starts from what its ``llm_runs`` row, and the rows of the runs it
``continues`` (a `dbt retry`'s earlier invocations: dbt gives the retry a new invocation id),
say they already paid: a `dbt retry` continues the sum (decision 0025).
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from ..models.spend import SpendLimit
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


def run_spend_limit(conn, schema: str, run_id: str, cap_usd: float, continues: Sequence[str] = ()) -> SpendLimit:
    """The SpendLimit every fill of run ``run_id`` shares (``conn``: any connection to the database),
    starting from what ``run_id`` and the runs it ``continues`` paid."""
    run_ids = [run_id, *(r for r in continues if r != run_id)]
    return _budgets.get(db_identity(conn, schema) + (run_id,), cap_usd, lambda: _paid_by_runs(conn, schema, run_ids))


def _paid_by_runs(conn, schema: str, run_ids: list[str]) -> float:
    with conn.cursor() as cur:
        cur.execute(f"select coalesce(sum(cost_usd), 0) from {quote_ident(schema)}.llm_runs where run_id = any(%s)",
                    (run_ids,))
        row = cur.fetchone()
    return float(row[0]) if row else 0.0
