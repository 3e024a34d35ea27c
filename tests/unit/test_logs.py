import logging
import threading
from datetime import timezone

import pytest

from dbt_pg_llm.errors import ErrorKind, ModelError
from dbt_pg_llm.models.logs import BufferedSink, LogDispatcher, LoggingSink, LogSink, MemorySink, ModelLog
from dbt_pg_llm.models.model_io import ModelOutput, TokenUsage


def a_log(**kw):
    base = dict(model="gpt", operation="complete", input_hash="ab" * 32, attempt=1, prompt_tokens=10,
                completion_tokens=3, latency_ms=12.5, cost_usd=0.0001, context={"run_id": "r1", "node_id": "n1"})
    base.update(kw)
    return ModelLog(**base)


def test_model_log_defaults_and_types():
    log = a_log()
    assert log.timestamp.tzinfo is timezone.utc
    assert log.error_kind == "none" and log.ok
    assert log.cached is False and log.http_status is None
    d = log.to_dict()
    assert d["context"] == {"run_id": "r1", "node_id": "n1"} and d["model"] == "gpt"
    with pytest.raises(TypeError):
        ModelLog("gpt")  # keyword-only


def test_model_log_normalizes_error_kind_and_redacts():
    log = a_log(error_kind=ErrorKind.API, error_message="401 for Bearer sk-secretsecret123")
    assert log.error_kind == "api" and not log.ok
    assert "secretsecret" not in log.error_message


def test_from_output():
    out = ModelOutput(text="x", tokens=TokenUsage(7, 2), latency_ms=40.0, cost_usd=0.5, model="gpt", attempts=3)
    log = ModelLog.from_output(out, input_hash="k", context={"node_id": "n"}, http_status=200)
    assert (log.model, log.attempt, log.prompt_tokens, log.completion_tokens) == ("gpt", 3, 7, 2)
    assert (log.latency_ms, log.cost_usd, log.error_kind, log.http_status) == (40.0, 0.5, "none", 200)
    bad = ModelOutput.failure(ModelError(ErrorKind.TIMEOUT, "too slow"), model="gpt")
    log = ModelLog.from_output(bad)
    assert log.error_kind == "timeout" and log.error_message == "too slow"


def test_sinks_satisfy_the_protocol():
    for sink in (MemorySink(), LoggingSink(), BufferedSink(), LogDispatcher()):
        assert isinstance(sink, LogSink)


def test_memory_sink():
    sink = MemorySink()
    sink.emit(a_log())
    assert len(sink) == 1 and sink.logs[0].model == "gpt"


def test_logging_sink_levels_and_redaction(caplog):
    sink = LoggingSink("dbt_pg_llm.test")
    with caplog.at_level(logging.DEBUG, logger="dbt_pg_llm.test"):
        sink.emit(a_log())
        sink.emit(a_log(error_kind="rate_limited", error_message="slow down, key sk-abcdefghijkl", http_status=429))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.WARNING]
    ok_line, err_line = (r.getMessage() for r in caplog.records)
    assert "\n" not in ok_line and "\n" not in err_line
    assert "model=gpt" in ok_line and "run_id=r1" in ok_line and "latency_ms=12.5" in ok_line
    assert "error=rate_limited" in err_line and "http=429" in err_line
    assert "sk-abcdefghijkl" not in err_line


def test_logging_sink_skips_formatting_when_disabled(caplog):
    sink = LoggingSink("dbt_pg_llm.quiet")
    with caplog.at_level(logging.WARNING, logger="dbt_pg_llm.quiet"):
        sink.emit(a_log())
    assert caplog.records == []


def test_buffered_sink_fifo_drain_and_drop_count():
    sink = BufferedSink(max_items=3)
    for i in range(5):
        sink.emit(a_log(attempt=i))
    assert len(sink) == 3 and sink.dropped == 2
    assert [x.attempt for x in sink.drain(2)] == [0, 1]
    assert [x.attempt for x in sink.drain()] == [2]
    assert sink.drain() == []
    sink.emit(a_log(attempt=9))
    assert [x.attempt for x in sink.drain(100)] == [9]


def test_buffered_sink_concurrent_emit_and_drain():
    sink = BufferedSink()
    drained = []
    stop = threading.Event()

    def producer(p):
        for i in range(5000):
            sink.emit(a_log(attempt=i, context={"p": p}))

    def consumer():
        while not stop.is_set() or len(sink):
            drained.extend(sink.drain(500))

    c = threading.Thread(target=consumer)
    c.start()
    producers = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    stop.set()
    c.join()
    assert len(drained) == 20_000 and sink.dropped == 0
    for p in range(4):  # each producer's records keep their order
        assert [x.attempt for x in drained if x.context["p"] == p] == list(range(5000))


def test_dispatcher_fans_out_and_survives_broken_sinks(caplog):
    class Broken:
        def emit(self, log):
            raise RuntimeError("disk full")

    a, b = MemorySink(), MemorySink()
    broken = Broken()
    d = LogDispatcher([a, broken, b])
    with caplog.at_level(logging.ERROR, logger="dbt_pg_llm"):
        for _ in range(3):
            d.emit(a_log())
    assert len(a) == 3 and len(b) == 3
    assert d.sink_errors == 3
    assert d.errors_by_sink[id(broken)] == 3
    assert len([r for r in caplog.records if "Broken" in r.getMessage()]) == 1  # logged once
    d.add(MemorySink())
    d.emit(a_log())
    assert len(d.sinks[-1]) == 1
