import json
import threading

import pytest

from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.metrics import MetricsRegistry, ModelMetrics, percentile
from dbt_pg_llm.models.model_io import ModelOutput, TokenUsage


def ok(latency=100.0, cost=0.01, prompt=10, completion=5, model="m"):
    return ModelOutput(text="x", value="x", tokens=TokenUsage(prompt, completion), latency_ms=latency,
                       cost_usd=cost, model=model)


def failed(kind=ErrorKind.TIMEOUT, latency=1000.0):
    return ModelOutput.failure(ModelError(kind, "nope"), latency_ms=latency)


def hit():
    return ModelOutput(text="x", value="x", tokens=TokenUsage(10, 5), cached=True, cost_usd=0.0)


def test_record_counts_requests_errors_and_cache_hits():
    m = ModelMetrics("gpt")
    m.record(ok(latency=100, cost=0.01))
    m.record(ok(latency=300, cost=0.03))
    m.record(failed(ErrorKind.TIMEOUT, latency=1000))
    m.record(failed(ErrorKind.INVALID_OUTPUT, latency=200))
    m.record(hit(), saved_cost_usd=0.02)
    m.record(hit(), saved_cost_usd=0.02)
    assert m.request_count == 4  # cache hits are not requests
    assert m.error_count == 2
    assert m.cache_hits == 2
    assert m.error_rate == 0.5
    assert m.cache_hit_rate == pytest.approx(2 / 6)
    assert m.avg_latency_ms == pytest.approx((100 + 300 + 1000 + 200) / 4)
    assert m.token_usage == TokenUsage(20, 10)  # cache hits spend no tokens
    assert m.cost_usd == pytest.approx(0.04)
    assert m.saved_cost_usd == pytest.approx(0.04)
    assert m.errors_by_kind == {"timeout": 1, "invalid_output": 1}


def test_saved_cost_defaults_to_the_hit_outputs_saved_cost():
    m = ModelMetrics()
    m.record(ModelOutput(text="x", cached=True, cost_usd=0.0, saved_cost_usd=0.5))
    assert m.saved_cost_usd == 0.5 and m.cost_usd == 0.0


def test_percentile_nearest_rank():
    assert percentile([], 95) == 0.0
    assert percentile(range(1, 101), 95) == 95
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4], 50) == 2


def test_p95_uses_a_bounded_reservoir_of_recent_latencies():
    m = ModelMetrics(reservoir_size=100)
    for _ in range(1000):
        m.record(ok(latency=10_000))  # old and slow
    for i in range(1, 101):
        m.record(ok(latency=i))  # recent: 1..100 fill the reservoir
    assert m.p95_latency_ms == 95
    assert len(m._latencies) == 100
    assert m.avg_latency_ms == pytest.approx((1000 * 10_000 + 5050) / 1100)  # the mean is exact


def test_report_is_readable_and_aligned():
    m = ModelMetrics("gpt")
    m.record(ok(latency=120, cost=0.5, prompt=1000, completion=200))
    m.record(failed(ErrorKind.API))
    m.record(hit(), saved_cost_usd=0.5)
    text = m.report()
    lines = text.splitlines()
    assert len(lines) >= 6
    assert len({line.index(":") for line in lines}) == 1  # labels aligned
    assert "gpt" in text and "2" in lines[1]
    assert "api=1" in text and "50.0%" in text
    assert "1,000 prompt" in text and "$0.5000" in text


def test_to_dict_is_json_able():
    m = ModelMetrics("gpt")
    m.record(ok())
    d = json.loads(json.dumps(m.to_dict()))
    assert d["request_count"] == 1 and d["total_tokens"] == 15 and d["model"] == "gpt"


def test_thread_safe_recording():
    m = ModelMetrics()

    def work():
        for i in range(2000):
            m.record(ok(cost=0.001))
            m.record(failed())
            if i % 100 == 0:
                _ = m.p95_latency_ms, m.report()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.request_count == 32_000
    assert m.error_count == 16_000
    assert m.token_usage == TokenUsage(160_000, 80_000)


def test_registry_creates_on_demand_once_per_name_across_threads():
    reg = MetricsRegistry()
    got = []
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        got.append(reg.for_model("shared"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1
    assert reg.for_model("shared").model == "shared"


def test_registry_report_has_a_row_per_model_and_a_total():
    reg = MetricsRegistry()
    reg.for_model("gpt").record(ok(latency=100, cost=1.0))
    reg.for_model("gpt").record(failed())
    reg.for_model("claude-haiku").record(ok(latency=300, cost=2.0))
    reg.for_model("claude-haiku").record(hit(), saved_cost_usd=2.0)
    text = reg.report()
    print("\n" + text)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["model", "requests", "errors"]
    assert len({len(line) for line in lines}) == 1  # an aligned table
    rows = {line.split()[0]: line.split() for line in lines if line and not line.startswith("-")}
    assert rows["gpt"][1:3] == ["2", "1"]
    assert rows["claude-haiku"][1] == "1"
    assert rows["TOTAL"][1:3] == ["3", "1"]
    assert rows["TOTAL"][4] == "1"  # cache hits
    assert rows["TOTAL"][-2] == "3.0000" and rows["TOTAL"][-1] == "2.0000"
    d = reg.to_dict()
    assert set(d["models"]) == {"gpt", "claude-haiku"}
    assert d["total"]["request_count"] == 3
    assert d["total"]["p95_latency_ms"] == 1000.0


def test_empty_registry_report():
    text = MetricsRegistry().report()
    assert "TOTAL" in text
