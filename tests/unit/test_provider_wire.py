"""The wire dialects of the providers (issue 8 §1-7, issue 7 §5): rate-limit headers, refusals,
logprobs only when wanted, structured output per provider, Anthropic streams, packed-batch costs,
Azure and OpenAI-compatible servers without logprobs / json_schema / usage. Injected transports."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from test_model_calls import SECRET, Script, answer, make_model

from dbt_pg_llm import (BatchInput, ConfigError, Engine, ErrorKind, InferenceStrategy, MemorySink, ModelConfig,
                        ModelInput, ResponseFormat, RetryPolicy)
from dbt_pg_llm.errors import ModelError
from dbt_pg_llm.models.keys import request_key
from dbt_pg_llm.models.pool import RequestPool
from dbt_pg_llm.models.providers import parse_duration, parse_retry_after, rate_limit_state

LABELS = ResponseFormat.one_of(["pos", "neg"])


def rate_limited(headers=None, message="Rate limit reached for requests", code="rate_limit_exceeded"):
    return httpx.Response(429, headers=headers or {},
                          json={"error": {"message": message, "type": "requests", "param": None, "code": code}})


# -- 1. rate-limit waits ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("3s", 3.0), ("1m30s", 90.0), ("300ms", 0.3), ("6m0s", 360.0),
                                           ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2", 2.0)])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "3 s", "s3", "3x"])
def test_not_durations(text):
    assert parse_duration(text) is None


def test_every_dialect_of_when_to_come_back():
    h = httpx.Headers
    assert parse_retry_after(h({"x-ratelimit-reset-requests": "3s"})) == 3.0
    assert parse_retry_after(h({"x-ratelimit-reset-tokens": "1m30s"})) == 90.0
    assert parse_retry_after(h({}), "Rate limit reached ... Please try again in 3.2s. Visit ...") == 3.2
    assert parse_retry_after(h({}), "Please try again in 450ms.") == pytest.approx(0.45)
    assert parse_retry_after(h({"llm_provider-retry-after": "7"})) == 7.0
    soon = (datetime.now(timezone.utc) + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 18 <= parse_retry_after(h({"anthropic-ratelimit-requests-remaining": "0",
                                       "anthropic-ratelimit-requests-reset": soon})) <= 21
    # the spent budget decides, not the other one's (long) reset
    assert parse_retry_after(h({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "6m0s",
                                "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})) == 2.0
    # explicit headers first
    assert parse_retry_after(h({"retry-after": "4", "x-ratelimit-reset-requests": "9s"}), "try again in 1s") == 4.0
    assert parse_retry_after(h({"content-type": "application/json"}), "no hint") is None


def test_429_with_only_x_ratelimit_reset_waits_that_long_instead_of_burning_retries():
    script = Script(rate_limited({"x-ratelimit-reset-requests": "400ms"}), answer("ok"))
    model = make_model(script, retry={"max_retries": 3, "base_delay_ms": 1, "max_delay_ms": 5000})
    t0 = time.perf_counter()
    out = model.call(ModelInput("hi"))
    elapsed = time.perf_counter() - t0
    assert out.ok and out.attempts == 2 and len(script.requests) == 2
    assert elapsed >= 0.4


def test_the_wait_for_a_3s_reset_is_3s():
    error = ModelError(ErrorKind.RATE_LIMITED, "x", retry_after=parse_retry_after(
        httpx.Headers({"x-ratelimit-reset-requests": "3s"})))
    policy = RetryPolicy(base_delay_ms=1, max_delay_ms=100)
    assert policy.backoff_seconds(1, error) == 3.0


def test_retry_after_beyond_max_delay_is_honoured_up_to_max_retry_after_s():
    policy = RetryPolicy(base_delay_ms=1, max_delay_ms=1000, max_retry_after_s=120)
    assert policy.backoff_seconds(1, ModelError(ErrorKind.RATE_LIMITED, "x", retry_after=45)) == 45.0


def test_retry_after_beyond_max_retry_after_s_fails_at_once_as_rate_limited():
    script = Script(rate_limited({"retry-after": "300"}), answer("ok"))
    model = make_model(script, retry={"max_retries": 3, "base_delay_ms": 1, "max_retry_after_s": 120})
    t0 = time.perf_counter()
    out = model.call(ModelInput("hi"))
    assert time.perf_counter() - t0 < 1.0
    assert out.error_kind is ErrorKind.RATE_LIMITED and out.attempts == 1 and len(script.requests) == 1
    assert "300 s" in out.error_message and "max_retry_after_s=120" in out.error_message
    assert not out.recoverable
    assert model.pool.held_s == 0  # the other keys fail at once too, not after a 300 s hold


def test_a_budget_spent_for_hours_does_not_hold_the_pool():
    spent = httpx.Response(200, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6h0m0s"},
                           json=answer("ok").json())
    model = make_model(Script(spent))
    assert model.call(ModelInput("a")).ok and model.pool.held_s == 0


def test_max_retry_after_s_is_validated_with_its_key_path():
    with pytest.raises(ConfigError, match=r"models.m.retry.max_retry_after_s: -1 must be >= 0"):
        ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v", "retry": {"max_retry_after_s": -1}},
                              "models.m")


def test_pool_holds_new_requests_while_a_budget_is_spent():
    from test_pool import fake_pool

    async def main():
        pool, ft = fake_pool(max_concurrency=8)
        pool.observe_budget(remaining=0, exhausted_for_s=2.5)
        async with pool.slot():
            admitted = ft.t
        pool.observe_budget(remaining=3, exhausted_for_s=None)
        return admitted, pool.limit

    admitted, limit = asyncio.run(main())
    assert admitted == pytest.approx(2.5) and limit == 3


def test_remaining_headers_reach_the_pool_before_any_429():
    reset = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms",
             "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "10ms"}
    spent = httpx.Response(200, headers=reset, json=answer("one").json())
    script = Script(spent, answer("two"))
    model = make_model(script)
    assert model.call(ModelInput("a")).ok
    t0 = time.perf_counter()
    assert model.call(ModelInput("b")).ok
    assert time.perf_counter() - t0 >= 0.28  # held by the pool, not answered with a 429
    assert model.pool.rate_limited_count == 0


def test_a_429_holds_the_other_queued_requests_too():
    pool = RequestPool(4)
    pool.record_rate_limited(retry_after=5)
    assert pool.held_s == pytest.approx(5, abs=0.1)


def test_rate_limit_state_reads_anthropic_and_openai_remaining():
    state = rate_limit_state(httpx.Headers({"anthropic-ratelimit-requests-remaining": "12",
                                            "anthropic-ratelimit-tokens-remaining": "0",
                                            "anthropic-ratelimit-tokens-reset": "2030-01-01T00:00:00Z"}))
    assert state.remaining_requests == 12 and state.remaining_tokens == 0 and state.exhausted_for_s > 0
    assert rate_limit_state(httpx.Headers({"content-type": "application/json"})) is None


# -- 7§5a. connection refused is reported at once ---------------------------------------------------
def test_connection_refused_is_a_connection_error_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from dbt_pg_llm import Model

    model = Model("down", {"api_url": f"http://127.0.0.1:{port}/v1", "model_version": "x",
                           "retry": {"max_retries": 0}})
    t0 = time.perf_counter()
    out = model.call(ModelInput("hi"))
    assert time.perf_counter() - t0 < 5
    assert out.error_kind is ErrorKind.API and out.recoverable
    assert f"could not connect to http://127.0.0.1:{port}/v1/chat/completions" in out.error_message
    assert "timeout" not in out.error_message
    asyncio.run(model.aclose())


# -- 3. refusals -------------------------------------------------------------------------------------
def test_openai_refusal_is_refused_with_the_text_and_tokens_not_retried():
    refusal = httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": None,
                                                                 "refusal": "I'm sorry, I can't help with that."},
                                                     "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 20, "completion_tokens": 9}})
    script = Script(refusal)
    out = make_model(script).call(ModelInput("x", response_format=ResponseFormat.json({"type": "object"})))
    assert out.error_kind is ErrorKind.REFUSED and not out.recoverable
    assert "I'm sorry, I can't help with that." in out.error_message
    assert len(script.requests) == 1 and out.attempts == 1
    assert out.tokens.prompt == 20 and out.tokens.completion == 9 and out.cost_usd == pytest.approx(0.038)


def test_anthropic_refusal_is_refused():
    body = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "I can't do that."}],
            "stop_reason": "refusal", "usage": {"input_tokens": 11, "output_tokens": 4}}
    script = Script(httpx.Response(200, json=body))
    out = make_model(script, provider="anthropic").call(ModelInput("x"))
    assert out.error_kind is ErrorKind.REFUSED and "I can't do that." in out.error_message
    assert out.tokens.total == 15 and len(script.requests) == 1


# -- 2. logprobs only when used ------------------------------------------------------------------------
def test_logprobs_only_when_a_confidence_is_used():
    script = Script(answer("pos", logprobs=[-0.1]))
    model = make_model(script)
    model.call(ModelInput("plain"))
    model.call(ModelInput("label", response_format=LABELS))
    model.call(ModelInput("cascade member", want_confidence=True))
    plain, label, wanted = script.requests
    assert "logprobs" not in plain and "top_logprobs" not in plain
    assert label["logprobs"] is True and label["top_logprobs"] == 1
    assert wanted["logprobs"] is True and "top_logprobs" not in wanted


def test_logprobs_rejected_with_400_are_dropped_once_and_remembered():
    litellm_400 = httpx.Response(400, json={"error": {
        "message": "litellm.UnsupportedParamsError: anthropic does not support parameters: ['logprobs', "
                   "'top_logprobs'], for model=claude-3-5-haiku. To drop these, set `litellm.drop_params=True`",
        "type": "None", "param": None, "code": "400"}})

    def handler(request):
        return litellm_400 if "logprobs" in json.loads(request.content) else answer("pos")

    script = Script(handler)
    model = make_model(script)
    first = model.call(ModelInput("a", response_format=LABELS))
    second = model.call(ModelInput("b", response_format=LABELS))
    assert first.ok and second.ok and first.value == "pos" and first.confidence is None
    assert first.attempts == 1  # an adaptation of the request, not a retry
    assert ["logprobs" in r for r in script.requests] == [True, False, False]


def test_logprobs_modes():
    script = Script(answer("pos"))
    make_model(script, logprobs="never").call(ModelInput("a", response_format=LABELS))
    make_model(script, logprobs="always").call(ModelInput("b"))
    assert "logprobs" not in script.requests[0] and script.requests[1]["logprobs"] is True
    rejected = Script(httpx.Response(400, json={"error": {"message": "logprobs is not supported"}}))
    out = make_model(rejected, logprobs="always").call(ModelInput("c"))
    assert out.error_kind is ErrorKind.INVALID_INPUT and len(rejected.requests) == 1
    with pytest.raises(ConfigError, match=r"models.m.logprobs: 'sometimes' is not a mode; use auto"):
        ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v", "logprobs": "sometimes"}, "models.m")


def test_cascade_asks_its_members_for_a_confidence_under_their_own_key():
    small, large = Script(answer("meh", logprobs=[-2.0])), Script(answer("sure", logprobs=[-0.01]))
    engine = Engine()
    engine.register(make_model(small, name="small"))
    engine.register(make_model(large, name="large"))
    out = InferenceStrategy.cascade(["small", "large"], min_confidence=0.8).call(engine, ModelInput("q"))
    assert out.value == "sure"
    assert small.requests[0]["logprobs"] is True and large.requests[0]["logprobs"] is True
    config = engine.registry.get("small").config
    # an answer cached without a confidence never serves a call that decides on it
    assert request_key(config, ModelInput("q", want_confidence=True)) != request_key(config, ModelInput("q"))
    assert request_key(config, ModelInput("q", want_confidence=True, response_format=LABELS)) == \
        request_key(config, ModelInput("q", response_format=LABELS))
    engine.close()


# -- 4. structured output ----------------------------------------------------------------------------------
STRICT = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
LOOSE = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
         "required": ["city"]}


def test_json_schema_strict_only_where_the_schema_allows_it():
    script = Script(answer('{"city": "Oslo"}'))
    model = make_model(script)
    assert model.call(ModelInput("a", response_format=ResponseFormat.json(STRICT))).value == {"city": "Oslo"}
    model.call(ModelInput("b", response_format=ResponseFormat.json(LOOSE)))
    strict, loose = (r["response_format"] for r in script.requests)
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"] == STRICT
    assert loose["json_schema"]["strict"] is False


def test_non_object_schema_is_wrapped_and_unwrapped():
    schema = {"type": "array", "items": {"type": "integer"}}
    script = Script(answer('{"value": [1, 2]}'))
    out = make_model(script).call(ModelInput("a", response_format=ResponseFormat.json(schema)))
    assert out.ok and out.value == [1, 2]
    assert script.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["value"] == schema


def test_server_without_json_schema_falls_back_to_json_object_then_prompt_and_remembers():
    def handler(request):
        rf = json.loads(request.content).get("response_format")
        if rf and rf["type"] == "json_schema":
            return httpx.Response(400, json={"error": {"message": "response_format type json_schema is not supported"}})
        if rf and rf["type"] == "json_object":
            return httpx.Response(400, json={"error": {"message": "Unknown parameter: response_format"}})
        return answer('{"city": "Rome"}')

    script = Script(handler)
    model = make_model(script)
    fmt = ResponseFormat.json(STRICT)
    assert model.call(ModelInput("a", response_format=fmt)).value == {"city": "Rome"}
    assert model.call(ModelInput("b", response_format=fmt)).ok
    kinds = [(r.get("response_format") or {}).get("type") for r in script.requests]
    assert kinds == ["json_schema", "json_object", None, None]


def test_explicit_json_object_and_prompt_modes():
    script = Script(answer('{"city": "Rome"}'))
    make_model(script, structured_output="json_object").call(ModelInput("a", response_format=ResponseFormat.json(STRICT)))
    make_model(script, structured_output="prompt").call(ModelInput("b", response_format=ResponseFormat.json(STRICT)))
    assert script.requests[0]["response_format"] == {"type": "json_object"}
    assert "response_format" not in script.requests[1]
    with pytest.raises(ConfigError, match=r"models.m.structured_output: 'tool' is not available for provider "
                                          r"'openai'; use one of auto, json_schema, json_object, prompt"):
        ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v", "structured_output": "tool"}, "models.m")


def test_labels_as_an_enum_schema_when_chosen_with_the_label_tokens_confidence():
    raw = '{"label":"neg"}'
    tokens = [{"token": t, "logprob": lp} for t, lp in (('{"', -0.0), ("label", -0.0), ('":"', -0.0),
                                                         ("neg", -0.5), ('"}', -0.0))]
    response = httpx.Response(200, json={"choices": [{"message": {"content": raw}, "finish_reason": "stop",
                                                      "logprobs": {"content": tokens}}],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 5}})
    script = Script(response)
    out = make_model(script, structured_output="json_schema").call(ModelInput("a", response_format=LABELS))
    assert out.ok and out.value == "neg" and out.confidence == pytest.approx(2.718281828 ** -0.5)
    schema = script.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["pos", "neg"]
    assert script.requests[0]["response_format"]["json_schema"]["strict"] is True
    bad = Script(httpx.Response(200, json={"choices": [{"message": {"content": '{"label":"maybe"}'},
                                                        "finish_reason": "stop"}]}))
    assert make_model(bad, structured_output="json_schema").call(
        ModelInput("a", response_format=LABELS)).error_kind is ErrorKind.INVALID_OUTPUT


def test_anthropic_structured_output_is_a_forced_tool_call():
    body = {"type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "answer", "input": {"city": "Lima"}}],
            "usage": {"input_tokens": 30, "output_tokens": 12}}
    script = Script(httpx.Response(200, json=body))
    out = make_model(script, provider="anthropic").call(ModelInput("a", response_format=ResponseFormat.json(STRICT)))
    assert out.ok and out.value == {"city": "Lima"} and out.tokens.total == 42
    sent = script.requests[0]
    assert sent["tools"] == [{"name": "answer", "description": "Record the answer.", "input_schema": STRICT}]
    assert sent["tool_choice"] == {"type": "tool", "name": "answer"}
    assert "logprobs" not in sent and sent["max_tokens"] > 0


# -- 5. Anthropic streams ------------------------------------------------------------------------------
def sse(*events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def test_anthropic_stream_is_sent_and_parsed_from_events():
    stream = sse({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                       "content": [], "usage": {"input_tokens": 25, "output_tokens": 1}}},
                 {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                 {"type": "ping"},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}},
                 {"type": "content_block_stop", "index": 0},
                 {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                  "usage": {"output_tokens": 15}},
                 {"type": "message_stop"})
    script = Script(httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream))
    out = make_model(script, provider="anthropic").call(ModelInput("hi", stream=True))
    assert script.requests[0]["stream"] is True
    assert out.ok and out.text == "Hello world" and out.tokens.prompt == 25 and out.tokens.completion == 15


def test_anthropic_stream_tool_input_arrives_in_pieces():
    stream = sse({"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 5}}},
                 {"type": "content_block_start", "index": 0,
                  "content_block": {"type": "tool_use", "id": "t", "name": "answer", "input": {}}},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
                 {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                                       "partial_json": 'ty": "Kyiv"}'}},
                 {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}})
    script = Script(httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream))
    out = make_model(script, provider="anthropic", stream=True).call(
        ModelInput("hi", response_format=ResponseFormat.json(STRICT)))
    assert out.ok and out.value == {"city": "Kyiv"} and out.tokens.total == 12


def test_anthropic_error_event_mid_stream_reports_the_providers_message():
    stream = sse({"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 5}}},
                 {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                 {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    script = Script(httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream))
    out = make_model(script, provider="anthropic", retry={"max_retries": 0}).call(ModelInput("hi", stream=True))
    assert out.error_kind is ErrorKind.API and out.recoverable
    assert "overloaded_error: Overloaded" in out.error_message and "event:" not in out.error_message


# -- 6. packed batches: every paid request is in the rows' costs --------------------------------------------
def test_packed_batch_rows_carry_every_paid_request():
    fmt = ResponseFormat.one_of(["pos", "neg"])
    paid = []

    def handler(request):
        prompt = json.loads(request.content)["messages"][-1]["content"]
        if prompt.startswith("Answer each of the"):
            items = json.loads(prompt.split("\n\n", 1)[1])
            if len(items) == 3:  # wrong count: the whole packed answer is unusable
                response = answer(json.dumps(["pos"]), prompt_tokens=100, completion_tokens=7)
            else:  # one bad item of four: that row falls back to a single call
                response = answer(json.dumps(["pos", "???", "neg", "pos"]), prompt_tokens=120, completion_tokens=9)
        else:
            response = answer("neg", prompt_tokens=10, completion_tokens=1)
        usage = response.json()["usage"]
        paid.append((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1000)
        return response

    model = make_model(Script(handler))
    audit = MemorySink()
    model.log.add(audit)
    inputs = [ModelInput(f"row {i}", response_format=fmt) for i in range(7)]
    out = model.batch_call(BatchInput(inputs, batch_size=4))
    assert sum(log.cost_usd for log in audit.logs) == pytest.approx(sum(paid))  # llm_calls: every request
    assert out.failed_count == 0 and out.packed_requests == 2
    assert len(paid) == 2 + 1 + 3  # two packed requests, one row and three rows falling back
    assert sum(o.cost_usd for o in out.outputs) == pytest.approx(sum(paid))
    assert out.cost_usd == pytest.approx(sum(paid))
    assert sum(o.tokens.total for o in out.outputs) == 100 + 7 + 120 + 9 + 4 * 11


# -- 7. Azure and OpenAI-compatible local servers --------------------------------------------------------
def test_azure_deployment_url_api_version_and_api_key_header():
    seen = []

    def handler(request):
        seen.append(request)
        return answer("hi")

    script = Script(handler)
    model = make_model(script, provider="azure", api_url="https://res.openai.azure.com", deployment="gpt4o-prod",
                       api_version="2024-10-21")
    assert model.call(ModelInput("x")).ok
    request = seen[0]
    assert str(request.url) == ("https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
                                "?api-version=2024-10-21")
    assert request.headers["api-key"] == SECRET and "authorization" not in request.headers


def test_azure_config_keys_are_validated():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"provider": "azure", "api_url": "https://res.openai.azure.com/openai/deployments/x",
                               "model_version": "gpt-4o"}, "models.az")
    text = str(info.value)
    assert "models.az.api_version: missing" in text and "models.az.api_url: give the resource URL only" in text
    with pytest.raises(ConfigError, match=r"models.o.deployment: only used by provider 'azure'"):
        ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "v", "deployment": "d"}, "models.o")


def test_local_server_without_usage_or_logprobs_records_zero_tokens_and_says_so(caplog):
    bare = httpx.Response(200, json={"choices": [{"message": {"content": "pos"}, "finish_reason": "stop"}]})
    model = make_model(Script(bare), name="ollama")
    with caplog.at_level(logging.WARNING, logger="dbt_pg_llm"):
        out = model.call(ModelInput("a", response_format=LABELS))
        again = model.call(ModelInput("b", response_format=LABELS))
    assert out.ok and again.ok and out.value == "pos" and out.confidence is None
    assert out.tokens.total == 0 and out.cost_usd == 0
    warnings = [r.getMessage() for r in caplog.records if "reports no token usage" in r.getMessage()]
    assert len(warnings) == 1 and "'ollama'" in warnings[0]


def test_anthropic_without_tool_support_falls_back_to_the_prompt():
    def handler(request):
        if "tools" in json.loads(request.content):
            return httpx.Response(400, json={"type": "error", "error": {
                "type": "invalid_request_error", "message": "tools: Extra inputs are not permitted"}})
        return httpx.Response(200, json={"content": [{"type": "text", "text": '{"city": "Bern"}'}],
                                         "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}})

    script = Script(handler)
    model = make_model(script, provider="anthropic")
    out = model.call(ModelInput("a", response_format=ResponseFormat.json(STRICT)))
    assert out.ok and out.value == {"city": "Bern"} and out.attempts == 1
    assert model.call(ModelInput("b", response_format=ResponseFormat.json(STRICT))).ok
    assert ["tools" in r for r in script.requests] == [True, False, False]


def test_anthropic_temperature_above_1_is_a_config_error_not_a_400_per_row():
    with pytest.raises(ConfigError, match=r"models.c.temperature: 1.5 is out of range for provider 'anthropic'; "
                                          r"use a number from 0 to 1"):
        ModelConfig.from_dict({"provider": "anthropic", "model_version": "claude", "temperature": 1.5}, "models.c")
