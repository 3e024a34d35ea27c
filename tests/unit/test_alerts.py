import pytest

from dbt_pg_llm.models.alerts import AlertThresholds, ModelAlert, should_alert
from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.metrics import ModelMetrics
from dbt_pg_llm.models.model_io import ModelOutput
from dbt_pg_llm.models.status import CircuitBreaker, ModelStatus


def metrics(n_ok, n_err, latency=100.0, cost=0.0, name="gpt"):
    m = ModelMetrics(name)
    for _ in range(n_ok):
        m.record(ModelOutput(text="x", latency_ms=latency, cost_usd=cost))
    for _ in range(n_err):
        m.record(ModelOutput.failure(ModelError(ErrorKind.TIMEOUT, "t"), latency_ms=latency))
    return m


def types(alerts):
    return [(a.type, a.severity) for a in alerts]


def test_healthy_model_has_no_alerts():
    assert should_alert(metrics(100, 5), AlertThresholds()) == []


def test_error_rate_warning_and_critical():
    t = AlertThresholds(max_error_rate=0.2)
    assert types(should_alert(metrics(70, 30), t)) == [("error_rate", "warning")]
    alerts = should_alert(metrics(50, 50), t)
    assert types(alerts) == [("error_rate", "critical")]  # 50% >= 2 x 20%
    assert "50.0%" in alerts[0].message and "timeout=50" in alerts[0].message
    assert alerts[0].model == "gpt" and alerts[0].ts.tzinfo is not None


def test_critical_error_rate_is_reachable_for_high_thresholds():
    t = AlertThresholds(max_error_rate=0.6)  # 2 x 60% > 100%: critical at 100%
    assert types(should_alert(metrics(0, 30), t)) == [("error_rate", "critical")]


def test_rates_wait_for_min_requests():
    t = AlertThresholds(min_requests=20)
    assert should_alert(metrics(0, 19, latency=60_000), t) == []
    assert {a.type for a in should_alert(metrics(0, 20, latency=60_000), t)} == {"error_rate", "latency"}


def test_latency_alert():
    t = AlertThresholds(max_avg_latency_ms=1000)
    assert types(should_alert(metrics(30, 0, latency=1500), t)) == [("latency", "warning")]
    assert types(should_alert(metrics(30, 0, latency=2000), t)) == [("latency", "critical")]


def test_cost_alert_needs_no_minimum_and_can_be_disabled():
    assert should_alert(metrics(1, 0, cost=100.0), AlertThresholds()) == []  # no budget set
    t = AlertThresholds(max_cost_usd=1.0)
    assert types(should_alert(metrics(1, 0, cost=1.5), t)) == [("cost", "warning")]
    assert types(should_alert(metrics(1, 0, cost=2.0), t)) == [("cost", "critical")]


def test_none_disables_checks():
    t = AlertThresholds(max_error_rate=None, max_avg_latency_ms=None)
    assert should_alert(metrics(0, 100, latency=10**6), t) == []


def test_circuit_alerts_and_ordering():
    clock = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=10, clock=lambda: clock[0])
    status = ModelStatus(breaker=breaker)
    for _ in range(2):
        status.request_started()
        status.request_finished(10, ModelError(ErrorKind.API, "503 overloaded"))
        breaker.record_failure(ErrorKind.API)
    alerts = should_alert(metrics(70, 30), AlertThresholds(), status=status, model="override")
    assert types(alerts) == [("circuit_open", "critical"), ("error_rate", "warning")]  # critical first
    assert all(a.model == "override" for a in alerts)
    assert "503 overloaded" in alerts[0].message and "2 consecutive" in alerts[0].message
    clock[0] = 10
    assert types(should_alert(metrics(1, 0), status=status)) == [("circuit_open", "warning")]  # half-open
    breaker.record_success()
    assert should_alert(metrics(1, 0), status=status) == []


def test_alert_str_and_threshold_validation():
    a = ModelAlert("gpt", "cost", "too much", "critical")
    assert str(a) == "[CRITICAL] gpt: too much"
    with pytest.raises(ValueError):
        AlertThresholds(critical_factor=0.5)
    with pytest.raises(ValueError):
        AlertThresholds(max_error_rate=20)
