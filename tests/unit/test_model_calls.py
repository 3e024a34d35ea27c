"""Model, providers, retry, failover, batch and Engine with an injected HTTP transport (no network)."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from dbt_pg_llm import (BatchInput, ConfigError, Engine, ErrorKind, MemoryBackend, MemorySink, Model,
                        ModelConfig, ModelInput, ResponseFormat, ResultCache, RetryPolicy)
from dbt_pg_llm.models.providers import parse_retry_after

SECRET = "sk-test-SECRET-0123456789"


def answer(content, *, finish="stop", prompt_tokens=10, completion_tokens=3, logprobs=None):
    choice = {"message": {"content": content}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": lp} for lp in logprobs]}
    return httpx.Response(200, json={"choices": [choice],
                                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}})


class Script:
    """A transport answering from a list of responses (or callables), recording requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return item(request) if callable(item) else item

    @property
    def transport(self):
        return httpx.MockTransport(self)


def make_model(script: Script, name="m", **config) -> Model:
    base = {"api_url": "http://llm.test/v1", "model_version": "test-1", "api_key": SECRET,
            "retry": {"max_retries": 2, "base_delay_ms": 1, "max_delay_ms": 5000},
            "cost_per_1k_input_tokens": 1.0, "cost_per_1k_output_tokens": 2.0}
    base.update(config)
    return Model(name, base, transport=script.transport)


def test_config_validation_reports_every_problem_with_key_and_fix():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"provider": "opneai", "timeout_ms": -5, "temperature": 3.5, "api_key": SECRET},
                              "llm.models.gpt")
    problems = info.value.problems
    text = str(info.value)
    assert any(p.startswith("llm.models.gpt.provider:") and "openai" in p for p in problems)
    assert any(p.startswith("llm.models.gpt.timeout_ms:") and "positive" in p for p in problems)
    assert any(p.startswith("llm.models.gpt.temperature:") and "0 to 2" in p for p in problems)
    assert any(p.startswith("llm.models.gpt.api_url:") and "base URL" in p for p in problems)
    assert any(p.startswith("llm.models.gpt.model_version:") for p in problems)
    assert SECRET not in text


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"models.x.temprature: unknown key; did you mean 'temperature'"):
        ModelConfig.from_dict({"temprature": 0.2}, "models.x")


def test_api_key_absent_from_repr_str_and_logs(caplog):
    script = Script(httpx.Response(401, json={"error": {"message": f"bad key {SECRET}", "type": "auth"}}))
    model = make_model(script)
    assert SECRET not in repr(model.config) and SECRET not in str(model.config) and SECRET not in repr(model)
    assert SECRET not in json.dumps(model.config.to_dict())
    sink = MemorySink()
    model.log.add(sink)
    with caplog.at_level(logging.DEBUG):
        out = model.call(ModelInput("hi"))
    assert out.error_kind is ErrorKind.API and "authentication failed" in out.error_message
    assert SECRET not in out.error_message
    assert SECRET not in caplog.text
    assert all(SECRET not in (log.error_message or "") for log in sink.logs)


def test_retry_honours_retry_after_ms_then_succeeds():
    script = Script(httpx.Response(429, headers={"retry-after-ms": "300"}, json={"error": {"message": "slow down"}}),
                    answer("ok"))
    model = make_model(script)
    t0 = time.perf_counter()
    out = model.call(ModelInput("hi"))
    elapsed = time.perf_counter() - t0
    assert out.ok and out.text == "ok" and out.attempts == 2
    assert elapsed >= 0.3, elapsed
    assert len(script.requests) == 2


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(httpx.Headers({"retry-after": future})) <= 31
    assert parse_retry_after(httpx.Headers({})) is None


@pytest.mark.parametrize("status,body,kind", [
    (400, {"error": {"message": "bad request", "type": "invalid_request_error"}}, ErrorKind.INVALID_INPUT),
    (401, {"error": {"message": "no", "type": "invalid_api_key"}}, ErrorKind.API),
    (429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                     "code": "insufficient_quota"}}, ErrorKind.QUOTA),
])
def test_no_retry_on_unrecoverable_errors(status, body, kind):
    script = Script(httpx.Response(status, json=body))
    out = make_model(script).call(ModelInput("hi"))
    assert out.error_kind is kind and not out.recoverable
    assert len(script.requests) == 1


def test_retries_stop_after_max_retries_and_cost_counts_paid_attempts():
    script = Script(httpx.Response(503, json={"error": {"message": "busy"}}))
    out = make_model(script).call(ModelInput("hi"))
    assert out.error_kind is ErrorKind.API and out.attempts == 3 and len(script.requests) == 3


def test_labels_confidence_and_invalid_label_is_an_error():
    fmt = ResponseFormat.one_of(["positive", "negative"])
    ok = make_model(Script(answer("Positive.", logprobs=[-0.2, -3.0]))).call(ModelInput("x", response_format=fmt))
    assert ok.value == "positive" and ok.confidence == pytest.approx(pytest.importorskip("math").exp(-0.2))
    bad = make_model(Script(answer("maybe"))).call(ModelInput("x", response_format=fmt))
    assert bad.error_kind is ErrorKind.INVALID_OUTPUT and bad.value is None and "not one of the labels" in bad.error_message
    # the invalid answer was paid for: its cost is kept on the failed output
    assert bad.cost_usd == pytest.approx((10 * 1.0 + 3 * 2.0) / 1000)


def test_json_schema_validation_and_text_confidence():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = ResponseFormat.json(schema)
    ok = make_model(Script(answer('{"n": 3}', logprobs=[-0.1, -0.3]))).call(ModelInput("x", response_format=fmt))
    assert ok.value == {"n": 3} and ok.confidence == pytest.approx(__import__("math").exp(-0.2))
    bad = make_model(Script(answer('{"n": "three"}'))).call(ModelInput("x", response_format=fmt))
    assert bad.error_kind is ErrorKind.INVALID_OUTPUT and "schema" in bad.error_message


def test_length_marks_truncated_and_content_filter_is_an_error():
    out = make_model(Script(answer("a long text cut", finish="length"))).call(ModelInput("x"))
    assert out.ok and out.truncated
    filtered = make_model(Script(answer("", finish="content_filter"))).call(ModelInput("x"))
    assert filtered.error_kind is ErrorKind.INVALID_OUTPUT and "content filter" in filtered.error_message


def test_error_in_200_body_and_malformed_body_are_api_errors():
    assert make_model(Script(httpx.Response(200, json={"error": {"message": "oops"}})),
                      retry={"max_retries": 0}).call(ModelInput("x")).error_kind is ErrorKind.API
    assert make_model(Script(httpx.Response(200, content=b"<html>")),
                      retry={"max_retries": 0}).call(ModelInput("x")).error_kind is ErrorKind.API


def test_circuit_opens_after_repeated_failures():
    script = Script(httpx.Response(500, json={"error": {"message": "down"}}))
    model = make_model(script, retry={"max_retries": 0})
    for _ in range(5):
        assert not model.call(ModelInput("x")).ok
    sent = len(script.requests)
    out = model.call(ModelInput("x"))
    assert "circuit open" in out.error_message and len(script.requests) == sent
    assert not model.status.refresh().available


def test_failover_serves_the_call_and_records_the_answering_model():
    engine = Engine()
    engine.register(make_model(Script(httpx.Response(500, json={"error": {"message": "down"}})), name="primary",
                               retry={"max_retries": 0}, fallbacks=["backup"]))
    engine.register(make_model(Script(answer("from backup")), name="backup"))
    out = engine.call("primary", ModelInput("x"))
    assert out.ok and out.text == "from backup" and out.model == "backup"


def test_engine_single_flight_and_errors_not_cached():
    script = Script(lambda r: answer("v"))
    engine = Engine(cache=ResultCache(MemoryBackend()))
    engine.register(make_model(script, name="m"))

    async def many():
        return await asyncio.gather(*(engine.acall("m", ModelInput("same prompt")) for _ in range(50)))

    outs = engine.loop.run(many())
    assert len(script.requests) == 1 and all(o.ok and o.text == "v" for o in outs)
    assert sum(not o.cached for o in outs) == 1
    again = engine.call("m", ModelInput("same prompt"))
    assert again.cached and again.cost_usd == 0.0 and len(script.requests) == 1

    failing = Script(httpx.Response(400, json={"error": {"message": "bad"}}))
    engine.register(make_model(failing, name="bad"))
    assert not engine.call("bad", ModelInput("p")).ok
    assert not engine.call("bad", ModelInput("p")).ok
    assert len(failing.requests) == 2  # the failure was not cached


def test_map_unordered_streams_with_bounded_window():
    in_flight = {"now": 0, "max": 0}

    async def slow_handler(request):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0.01)
        in_flight["now"] -= 1
        prompt = json.loads(request.content)["messages"][-1]["content"]
        return answer(prompt.upper())

    class AsyncScript(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            return await slow_handler(request)

    engine = Engine()
    engine.register(Model("m", {"api_url": "http://x/v1", "model_version": "v", "max_concurrency": 64},
                          transport=AsyncScript()))
    chunks = []
    start_chunk = engine._start_chunk

    def counting_start_chunk(model_name, chunk, *args):
        chunks.append(len(chunk))
        start_chunk(model_name, chunk, *args)
    engine._start_chunk = counting_start_chunk
    results = dict(engine.map_unordered("m", ((i, ModelInput(f"p{i}")) for i in range(200)), window=20))
    assert len(results) == 200 and results[7].text == "P7"
    assert in_flight["max"] <= 20
    # inputs cross to the loop thread a chunk (window / 4) at a time, not one per answer
    assert sum(chunks) == 200 and set(chunks) == {5} and len(chunks) == 40


def test_batch_keeps_order_and_counts_failures():
    def handler(request):
        prompt = json.loads(request.content)["messages"][-1]["content"]
        if "bad" in prompt:
            return httpx.Response(400, json={"error": {"message": "rejected"}})
        return answer(prompt + "!")

    model = make_model(Script(handler))
    inputs = [ModelInput(p) for p in ["a", "bad1", "c", "bad2", "e"]]
    out = model.batch_call(BatchInput(inputs))
    assert [o.text for o in out.outputs] == ["a!", None, "c!", None, "e!"]
    assert out.failed_count == 2 and out.error.startswith("invalid_input")


def test_row_packing_and_fallback_to_single_calls():
    fmt = ResponseFormat.one_of(["pos", "neg"])

    def handler(request):
        prompt = json.loads(request.content)["messages"][-1]["content"]
        if prompt.startswith("Answer each of the"):
            items = json.loads(prompt.split("\n\n", 1)[1])
            # a bad packed reply: one item is not a label -> that row falls back to a single call
            return answer(json.dumps(["pos" if "good" in it["input"] else "???" for it in items]))
        return answer("neg")

    script = Script(handler)
    model = make_model(script)
    out = model.batch_call(BatchInput([ModelInput(t, response_format=fmt) for t in ["good a", "good b", "meh", "good c"]],
                                      batch_size=4))
    assert [o.value for o in out.outputs] == ["pos", "pos", "neg", "pos"]
    assert out.packed_requests == 1 and len(script.requests) == 2 and out.failed_count == 0


def test_retry_policy_validation():
    assert RetryPolicy(max_retries=-1).problems()[0].startswith("retry.max_retries")
    with pytest.raises(ConfigError, match="retry.backof"):
        RetryPolicy.from_dict({"backof": 2})


def test_latency_is_the_request_time_not_the_queue_wait():
    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            await asyncio.sleep(0.05)
            return answer("ok")

    model = Model("m", {"api_url": "http://x/v1", "model_version": "v", "max_concurrency": 1}, transport=Slow())

    async def five():
        return await asyncio.gather(*(model.acall(ModelInput(f"p{i}")) for i in range(5)))

    from dbt_pg_llm.models.runtime import shared_loop
    outs = shared_loop().run(five())
    assert all(o.ok for o in outs)
    assert max(o.latency_ms for o in outs) < 150  # the last one waited ~200 ms for the pool
    assert model.metrics.avg_latency_ms < 150


def test_a_packed_requests_answers_are_journaled_in_one_group_commit():
    """Each row of a packed request is journaled before it is used, all in one commit: awaited one
    after another, 16 rows waited for 16 commits (16 x commit_delay_s per packed request)."""
    class CountingBackend(MemoryBackend):
        def __init__(self):
            super().__init__()
            self.transactions = []

        def set_many(self, items):
            self.transactions.append([key for key, _ in items])
            super().set_many(items)

    fmt = ResponseFormat.one_of(["pos", "neg"])

    def handler(request):
        items = json.loads(json.loads(request.content)["messages"][-1]["content"].split("\n\n", 1)[1])
        return answer(json.dumps(["pos"] * len(items)))

    backend = CountingBackend()
    engine = Engine(cache=ResultCache(backend, commit_delay_s=0.05))
    engine.register(make_model(Script(handler)))
    rows = list(engine.map_packed("m", ((i, ModelInput(f"good {i}", response_format=fmt)) for i in range(16)),
                                  batch_size=16))
    assert sorted(tag for tag, _ in rows) == list(range(16)) and all(out.value == "pos" for _, out in rows)
    assert [len(keys) for keys in backend.transactions] == [16]
