"""Turn metrics and status into alerts a human should see at the end of (or during) a run.

Rates and averages over a handful of calls are noise, so error-rate and latency alerts wait for
``min_requests`` requests; cost and an open circuit are facts and alert at once. A breach is a
``warning``; a breach by ``critical_factor`` times the threshold (or an open circuit) is
``critical``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .metrics import ModelMetrics
    from .status import ModelStatus

__all__ = ["ModelAlert", "AlertThresholds", "should_alert", "ALERT_TYPES", "SEVERITIES"]

ALERT_TYPES = ("error_rate", "latency", "cost", "circuit_open")
SEVERITIES = ("warning", "critical")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ModelAlert:
    model: str
    type: str  # one of ALERT_TYPES
    message: str
    severity: str = "warning"  # "warning" | "critical"
    ts: datetime = field(default_factory=_utcnow)

    def __str__(self) -> str:
        return f"[{self.severity.upper()}] {self.model}: {self.message}"


@dataclass(frozen=True)
class AlertThresholds:
    """``None`` disables a check. Error rate is a fraction (0.2 = 20 %)."""

    max_error_rate: float | None = 0.2
    max_avg_latency_ms: float | None = 10_000
    max_cost_usd: float | None = None
    min_requests: int = 20
    critical_factor: float = 2.0

    def __post_init__(self):
        if self.critical_factor < 1:
            raise ValueError("critical_factor must be >= 1")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ValueError("max_error_rate is a fraction between 0 and 1")


def _severity(value: float, limit: float, factor: float, cap: float | None = None) -> str:
    critical_at = limit * factor
    if cap is not None:
        critical_at = min(cap, critical_at)
    return "critical" if value >= critical_at else "warning"


def should_alert(metrics: "ModelMetrics", thresholds: AlertThresholds | None = None,
                 status: "ModelStatus | None" = None, model: str | None = None) -> list[ModelAlert]:
    """Alerts for one model, most severe first. ``model`` defaults to ``metrics.model``."""
    t = thresholds or AlertThresholds()
    name = model or getattr(metrics, "model", "") or "?"
    alerts: list[ModelAlert] = []
    requests = metrics.request_count
    enough = requests >= t.min_requests

    if enough and t.max_error_rate is not None and requests:
        rate = metrics.error_rate
        if rate > t.max_error_rate:
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(metrics.errors_by_kind.items(), key=lambda kv: -kv[1]))
            alerts.append(ModelAlert(
                name, "error_rate",
                f"error rate {rate:.1%} ({metrics.error_count}/{requests}) is above {t.max_error_rate:.1%}"
                + (f" [{kinds}]" if kinds else ""),
                _severity(rate, t.max_error_rate, t.critical_factor, cap=1.0)))

    if enough and t.max_avg_latency_ms is not None:
        avg = metrics.avg_latency_ms
        if avg > t.max_avg_latency_ms:
            alerts.append(ModelAlert(
                name, "latency",
                f"average latency {avg:,.0f} ms (p95 {metrics.p95_latency_ms:,.0f} ms) is above "
                f"{t.max_avg_latency_ms:,.0f} ms",
                _severity(avg, t.max_avg_latency_ms, t.critical_factor)))

    if t.max_cost_usd is not None and metrics.cost_usd > t.max_cost_usd:
        alerts.append(ModelAlert(
            name, "cost",
            f"cost ${metrics.cost_usd:,.4f} is above the budget of ${t.max_cost_usd:,.4f}",
            _severity(metrics.cost_usd, t.max_cost_usd, t.critical_factor)))

    if status is not None:
        state = status.refresh().circuit_state if hasattr(status, "refresh") else status.circuit_state
        if state in ("open", "half_open"):
            detail = f"; last error: {status.last_error_message}" if status.last_error_message else ""
            if state == "open":
                message = (f"circuit open after {status.consecutive_failures} consecutive failures: "
                           f"calls fail fast{detail}")
            else:
                message = f"circuit half-open: probing whether the model is back{detail}"
            alerts.append(ModelAlert(name, "circuit_open", message,
                                     "critical" if state == "open" else "warning"))

    alerts.sort(key=lambda a: a.severity != "critical")  # stable: critical first, order kept
    return alerts
