import threading

import pytest

from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.model_io import ModelOutput
from dbt_pg_llm.models.status import BREAKER_ERRORS, CircuitBreaker, ModelStatus


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


def make(threshold=3, timeout=10.0):
    clock = FakeClock()
    return CircuitBreaker(failure_threshold=threshold, reset_timeout_s=timeout, clock=clock), clock


def test_opens_after_threshold_consecutive_failures():
    b, _ = make(threshold=3)
    for _ in range(2):
        assert b.record_failure(ModelError(ErrorKind.TIMEOUT, "slow")) is True
        assert b.state == "closed" and b.allow()
    b.record_failure(ModelError(ErrorKind.API, "503"))
    assert b.state == "open"
    assert b.allow() is False
    assert b.open_count == 1


def test_success_resets_the_streak():
    b, _ = make(threshold=3)
    b.record_failure(ErrorKind.TIMEOUT)
    b.record_failure(ErrorKind.TIMEOUT)
    b.record_success()
    b.record_failure(ErrorKind.TIMEOUT)
    b.record_failure(ErrorKind.TIMEOUT)
    assert b.state == "closed"
    assert b.consecutive_failures == 2


@pytest.mark.parametrize("kind", [ErrorKind.RATE_LIMITED, ErrorKind.INVALID_INPUT, ErrorKind.INVALID_OUTPUT,
                                  ErrorKind.INTERNAL])
def test_errors_that_are_not_the_models_fault_do_not_count(kind):
    b, _ = make(threshold=2)
    for _ in range(10):
        assert b.record_failure(ModelError(kind, "x")) is False
    assert b.state == "closed"
    assert b.consecutive_failures == 0


def test_neutral_errors_do_not_reset_the_streak_either():
    b, _ = make(threshold=3)
    b.record_failure(ErrorKind.API)
    b.record_failure(ErrorKind.INVALID_OUTPUT)
    b.record_failure(ErrorKind.API)
    b.record_failure(ErrorKind.API)
    assert b.state == "open"


def test_quota_opens_the_circuit():
    assert ErrorKind.QUOTA in BREAKER_ERRORS
    b, _ = make(threshold=1)
    b.record_failure(ModelError(ErrorKind.QUOTA, "insufficient_quota"))
    assert b.state == "open"


def test_accepts_failed_model_output():
    b, _ = make(threshold=1)
    out = ModelOutput.failure(ModelError(ErrorKind.TIMEOUT, "t"))
    assert b.record_failure(out) is True
    assert b.state == "open"


def test_half_open_allows_exactly_one_probe_then_closes_on_success():
    b, clock = make(threshold=1, timeout=10)
    b.record_failure(ErrorKind.API)
    clock.advance(9.9)
    assert b.state == "open" and not b.allow()
    clock.advance(0.1)
    assert b.state == "half_open"
    assert b.allow() is True
    assert b.allow() is False  # one probe at a time
    assert b.allow() is False
    b.record_success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(5))


def test_probe_failure_reopens_for_a_full_timeout():
    b, clock = make(threshold=2, timeout=10)
    b.record_failure(ErrorKind.API)
    b.record_failure(ErrorKind.API)
    clock.advance(10)
    assert b.allow()
    b.record_failure(ErrorKind.TIMEOUT)  # a single failure is enough in half_open
    assert b.state == "open"
    assert b.open_count == 2
    clock.advance(5)
    assert not b.allow()
    clock.advance(5)
    assert b.allow()


def test_neutral_probe_result_releases_the_probe_slot():
    b, clock = make(threshold=1, timeout=10)
    b.record_failure(ErrorKind.API)
    clock.advance(10)
    assert b.allow()
    b.record_failure(ErrorKind.INVALID_OUTPUT)
    assert b.state == "half_open"
    assert b.allow()  # another probe may go


def test_lost_probe_does_not_wedge_the_breaker():
    b, clock = make(threshold=1, timeout=10)
    b.record_failure(ErrorKind.API)
    clock.advance(10)
    assert b.allow()  # the probe's task is cancelled and never reports
    clock.advance(5)
    assert not b.allow()
    clock.advance(5)
    assert b.allow()


def test_breaker_validation():
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)


def test_breaker_is_consistent_under_threads():
    b = CircuitBreaker(failure_threshold=1000, reset_timeout_s=60)

    def work():
        for _ in range(200):
            b.record_failure(ErrorKind.API)
            b.allow()
            _ = b.state

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.consecutive_failures == 1600
    assert b.state == "open"


# -- ModelStatus ------------------------------------------------------------------------------------
def test_status_tracks_requests_and_latency_mean_then_ema():
    s = ModelStatus(ema_alpha=0.5)
    s.request_started()
    s.request_started()
    assert s.current_requests == 2 and s.max_requests == 2
    s.request_finished(100.0)
    s.request_finished(300.0)
    assert s.current_requests == 0 and s.max_requests == 2
    assert s.avg_response_time_ms == pytest.approx(200.0)  # running mean for the first 1/alpha samples
    s.request_started()
    s.request_finished(400.0)
    assert s.avg_response_time_ms == pytest.approx(300.0)  # EMA: 200 + 0.5 * (400 - 200)


def test_status_running_mean_is_exact_at_start():
    s = ModelStatus()  # alpha 0.1 -> exact mean over the first 10
    for ms in (10, 20, 30, 40):
        s.request_started()
        s.request_finished(ms)
    assert s.avg_response_time_ms == pytest.approx(25.0)


def test_status_records_errors_redacted():
    s = ModelStatus()
    s.request_started()
    s.request_finished(5.0, ModelError(ErrorKind.API, "boom with key sk-abcdefghijkl"))
    assert s.consecutive_failures == 1
    assert s.last_error_time is not None and s.last_error_time.tzinfo is not None
    assert s.last_error_message.startswith("api: boom")
    assert "sk-abcdefghijkl" not in s.last_error_message
    s.request_started()
    s.request_finished(5.0)
    assert s.consecutive_failures == 0


def test_status_follows_breaker_and_enabled():
    b, clock = make(threshold=1, timeout=10)
    s = ModelStatus(breaker=b)
    b.record_failure(ErrorKind.TIMEOUT)
    snap = s.snapshot()
    assert snap["circuit_state"] == "open"
    assert snap["available"] is False
    assert snap["consecutive_failures"] == 1
    clock.advance(10)
    assert s.refresh().circuit_state == "half_open"
    assert s.available is True
    s.set_enabled(False)
    assert s.snapshot()["available"] is False


def test_snapshot_is_json_able():
    import json

    s = ModelStatus()
    s.request_started()
    s.request_finished(1.0, ModelOutput.failure(ModelError(ErrorKind.QUOTA, "no money")))
    data = json.loads(json.dumps(s.snapshot()))
    assert data["last_error_message"] == "quota: no money"
    assert set(data) >= {"available", "current_requests", "max_requests", "last_error_time",
                         "last_error_message", "avg_response_time_ms", "consecutive_failures",
                         "circuit_state"}
