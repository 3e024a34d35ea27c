"""Once-per-invocation upkeep of the audit schema: alerts from the engine's metrics, and retention.

``raise_alerts`` turns ``alerts.should_alert`` over every model the engine used into rows of
``llm_alerts``, at most one per (run, model, alert type): a run that keeps failing says so once.
``apply_retention`` (migrations.py) is run by the adapter once per invocation when
``audit_retention_days`` is set.
"""
from __future__ import annotations

from ..alerts import AlertThresholds, ModelAlert, should_alert
from .migrations import quote_ident
from .writers import write_alerts

__all__ = ["raise_alerts"]


def raise_alerts(conn, schema: str, engine, run_id: str,
                 thresholds: AlertThresholds | None = None) -> list[ModelAlert]:
    """Write the alerts not yet raised for this run; return them (for the dbt log)."""
    with conn.cursor() as cur:
        cur.execute(f"select model, alert_type from {quote_ident(schema)}.llm_alerts where run_id = %s", (run_id,))
        raised = set(cur.fetchall())
    new: list[ModelAlert] = []
    for name in engine.metrics.names():
        status = engine.registry.get(name).status.refresh() if name in engine.registry else None
        for alert in should_alert(engine.metrics.for_model(name), thresholds, status=status, model=name):
            if (name, alert.type) not in raised:
                raised.add((name, alert.type))
                new.append(alert)
    write_alerts(conn, schema, new, run_id=run_id)
    return new
