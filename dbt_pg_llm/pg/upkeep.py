"""Once-per-invocation upkeep of the audit schema: alerts from the engine's metrics, and retention.

``raise_alerts`` turns ``alerts.should_alert`` over every model the engine used into rows of
``llm_alerts``, at most one per (run, model, alert type): a run that keeps failing says so once.
The cost it compares with ``max_cost_usd`` is what the run's ``llm_calls`` rows say it paid each
model (issue 17.1: one source of truth), which includes batch lines this process never requested.
``apply_retention`` (migrations.py) is run by the adapter once per invocation when
``audit_retention_days`` is set.
"""
from __future__ import annotations

from ..models.alerts import AlertThresholds, ModelAlert, should_alert
from .migrations import quote_ident
from .writers import write_alerts

__all__ = ["raise_alerts"]


def raise_alerts(conn, schema: str, engine, run_id: str,
                 thresholds: AlertThresholds | None = None) -> list[ModelAlert]:
    """Write the alerts not yet raised for this run; return them (for the dbt log)."""
    q = quote_ident(schema)
    with conn.cursor() as cur:
        cur.execute(f"select model, alert_type from {q}.llm_alerts where run_id = %s", (run_id,))
        raised = set(cur.fetchall())
        cur.execute(f"select model, coalesce(sum(cost_usd), 0) from {q}.llm_calls "
                    "where run_id = %s and not cached and model is not null group by model", (run_id,))
        paid = {model: float(cost) for model, cost in cur.fetchall()}
    new: list[ModelAlert] = []
    for name in sorted(set(engine.metrics.names()) | set(paid)):
        status = engine.registry.get(name).status.refresh() if name in engine.registry else None
        metrics = _PaidByRun(engine.metrics.for_model(name), paid.get(name, 0.0))
        for alert in should_alert(metrics, thresholds, status=status, model=name):
            if (name, alert.type) not in raised:
                raised.add((name, alert.type))
                new.append(alert)
    write_alerts(conn, schema, new, run_id=run_id)
    return new


class _PaidByRun:
    """A model's in-process metrics, with ``cost_usd`` = what the run's llm_calls rows paid it."""

    def __init__(self, metrics, cost_usd: float):
        self._metrics = metrics
        self.cost_usd = cost_usd

    def __getattr__(self, name):
        return getattr(self._metrics, name)
