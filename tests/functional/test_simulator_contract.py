"""Contract tests: the official ``openai`` and ``anthropic`` SDKs call the simulator and parse every kind
of answer with their own typed models, strictly (pydantic validation of the raw JSON, no unknown
fields anywhere), and map its errors to their own exception classes. If the simulator drifts from the
real wire format, these fail; the project's own client is not involved."""
from __future__ import annotations

import json
import time
from typing import Any, Literal

import anthropic
import jsonschema
import openai
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from dbt_pg_llm.simulator import SimulatorConfig, SimulatorServer
from dbt_pg_llm.simulator.answers import LABELS_PHRASE

KEY = "sk-contract-test"
MODELS = ("gpt-4o-mini", "claude-sim-haiku", "claude-sim-sonnet")


@pytest.fixture(scope="module")
def sim():
    config = SimulatorConfig(api_key=KEY, models=MODELS, fault_retry_after_s=0.6, cost_per_1k_input=1.0)
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture
def oai(sim):
    sim.reset()
    with openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def claude(sim):
    sim.reset()
    with anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def no_extras(value: Any, path: str = "$") -> None:
    """Every field the simulator sends is one the SDK's model declares (recursively)."""
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"{path}: fields unknown to {type(value).__name__}: {sorted(value.model_extra)}"
        for name in type(value).model_fields:
            no_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            no_extras(item, f"{path}[{i}]")


def strict(model_cls, data: dict):
    """Validate raw JSON with the SDK's pydantic model (the SDK itself only constructs, leniently)."""
    obj = model_cls.model_validate(data)
    no_extras(obj)
    return obj


def raw_json(resp) -> dict:
    return json.loads(resp.http_response.text if hasattr(resp, "http_response") else resp.text)


USER = [{"role": "user", "content": "The kettle is great, positive overall"}]


# -- OpenAI ----------------------------------------------------------------------------------------
def test_openai_plain_logprobs_and_n(oai):
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER, n=2, logprobs=True,
                                                       top_logprobs=2, temperature=0.7)
    assert raw.headers["x-request-id"].startswith("req_")
    completion = strict(ChatCompletion, raw_json(raw))
    assert completion == raw.parse()
    assert [c.index for c in completion.choices] == [0, 1] and completion.choices[0].message.content
    lps = completion.choices[0].logprobs.content
    assert "".join(t.token for t in lps) == completion.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in lps)
    usage = completion.usage
    assert usage.prompt_tokens_details.cached_tokens == 0 and usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


class Review(pydantic.BaseModel):
    product: str
    sentiment: Literal["positive", "negative"]
    stars: int = pydantic.Field(ge=1, le=5)
    tags: list[str]


def test_openai_json_schema_through_parse(oai):
    """``parse`` sends a strict json_schema made from the pydantic model and validates the answer with it."""
    completion = oai.chat.completions.parse(model="gpt-4o-mini", messages=USER, response_format=Review)
    review = completion.choices[0].message.parsed
    assert isinstance(review, Review) and 1 <= review.stars <= 5 and review.sentiment in ("positive", "negative")
    assert completion.choices[0].message.refusal is None


def test_openai_refusal_through_parse(oai):
    completion = oai.chat.completions.parse(model="gpt-4o-mini", response_format=Review, messages=[
        {"role": "user", "content": "something bad [[fault:refusal]]"}])
    message = completion.choices[0].message
    assert message.refusal and message.content is None and message.parsed is None


def test_openai_stream_with_include_usage(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True})
    raw.http_response.read()
    lines = [line for line in raw.http_response.text.splitlines() if line.startswith("data: {")]
    chunks = [strict(ChatCompletionChunk, json.loads(line[6:])) for line in lines]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "stop"
    with oai.chat.completions.stream(model="gpt-4o-mini", messages=USER,
                                     stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()
    plain = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert final.choices[0].message.content == plain.choices[0].message.content
    assert final.usage.completion_tokens == plain.usage.completion_tokens


def test_openai_models_list_and_retrieve(oai):
    assert [m.id for m in oai.models.list()] == list(MODELS)
    assert oai.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-nope")


@pytest.mark.parametrize("kwargs,prompt,exc,status,code", [
    ({"model": "gpt-5-nope"}, "hi", openai.NotFoundError, 404, "model_not_found"),
    ({"temperature": 3}, "hi", openai.BadRequestError, 400, "decimal_above_max_value"),
    ({"top_logprobs": 2}, "hi", openai.BadRequestError, 400, None),
    ({}, "x [[fault:context_length]]", openai.BadRequestError, 400, "context_length_exceeded"),
    ({}, "x [[fault:429]]", openai.RateLimitError, 429, "rate_limit_exceeded"),
    ({}, "x [[fault:insufficient_quota]]", openai.RateLimitError, 429, "insufficient_quota"),
    ({}, "x [[fault:500]]", openai.InternalServerError, 500, None),
    ({}, "x [[fault:overloaded]]", openai.InternalServerError, 503, "service_unavailable"),
    ({}, "x [[fault:malformed]]", openai.InternalServerError, 502, None),
])
def test_openai_errors_map_to_sdk_exceptions(oai, kwargs, prompt, exc, status, code):
    with pytest.raises(exc) as info:
        oai.chat.completions.create(**({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
                                       | kwargs))
    assert info.value.status_code == status and info.value.code == code
    if status != 502:
        assert info.value.request_id and info.value.type


def test_openai_authentication_error(sim):
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.code == "invalid_api_key" and KEY not in str(info.value)


def test_openai_sdk_retry_honours_retry_after(sim):
    """The SDK's own retry waits what retry-after-ms says (0.6 s here, longer than its own 0.5 s start)."""
    sim.reset()
    prompt = "busy row [[fault:429*2]]"
    with openai.OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=2) as client:
        started = time.monotonic()
        out = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        elapsed = time.monotonic() - started
    assert out.choices[0].message.content
    stats = sim.stats()
    assert stats["requests"] == 3 and stats["faults"] == {"429": 2} and stats["answered"] == 1
    assert 1.2 <= elapsed < 3.0


# -- Anthropic -------------------------------------------------------------------------------------
def test_anthropic_message(claude):
    raw = claude.messages.with_raw_response.create(model="claude-sim-haiku", max_tokens=64, messages=USER,
                                                   system=f"Classify.\n{LABELS_PHRASE}positive | negative",
                                                   extra_body={"temperature": 0.2})
    assert raw.headers["request-id"].startswith("req_")
    message = strict(Message, raw_json(raw))
    assert message.content[0].type == "text" and message.content[0].text == "positive"
    assert message.stop_reason == "end_turn" and message.usage.cache_read_input_tokens == 0
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 2


def test_anthropic_stream(claude):
    raw = claude.messages.with_raw_response.create(model="claude-sim-haiku", max_tokens=64, messages=USER,
                                                   stream=True)
    raw.http_response.read()
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    events = []
    for block in raw.http_response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        if name == "event: ping":  # keep-alive: the SDK skips it by name, as the API documents
            assert json.loads(data[len("data: "):]) == {"type": "ping"}
            continue
        event = adapter.validate_python(json.loads(data[len("data: "):]))
        no_extras(event)
        assert name == "event: " + event.type
        events.append(event)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    with claude.messages.stream(model="claude-sim-haiku", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    plain = claude.messages.create(model="claude-sim-haiku", max_tokens=64, messages=USER)
    assert text == final.content[0].text == plain.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens and final.stop_reason == "end_turn"


REVIEW_SCHEMA = Review.model_json_schema()


def test_anthropic_forced_tool_use(claude):
    tools = [{"name": "record_review", "description": "Record the review", "input_schema": REVIEW_SCHEMA}]
    message = claude.messages.create(model="claude-sim-sonnet", max_tokens=300, messages=USER, tools=tools,
                                     tool_choice={"type": "tool", "name": "record_review"})
    no_extras(message)
    assert message.stop_reason == "tool_use" and [b.type for b in message.content] == ["tool_use"]
    jsonschema.validate(message.content[0].input, REVIEW_SCHEMA)
    Review.model_validate(message.content[0].input)
    with claude.messages.stream(model="claude-sim-sonnet", max_tokens=300, messages=USER, tools=tools,
                                tool_choice={"type": "tool", "name": "record_review"}) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == message.content[0].input


def test_anthropic_structured_output_through_parse(claude):
    """``parse`` sends output_config.format (limits moved into descriptions) and validates with pydantic."""
    for i in range(5):
        parsed = claude.messages.parse(model="claude-sim-sonnet", max_tokens=300, output_format=Review,
                                       messages=[{"role": "user", "content": f"review {i}: fine kettle"}])
        assert isinstance(parsed.parsed_output, Review)


def test_anthropic_models_list_pages(claude):
    page = claude.models.list(limit=2)
    assert [m.id for m in page.data] == list(MODELS[:2]) and page.has_more
    assert [m.id for m in claude.models.list(limit=1)] == list(MODELS)  # auto-pagination via last_id
    first = page.data[0]
    no_extras(first)
    assert claude.models.retrieve("claude-sim-haiku").display_name == "Claude Sim Haiku"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("claude-nope")
    assert first.type == "model" and first.display_name and first.created_at.year >= 2024


def test_anthropic_refusal(claude):
    message = claude.messages.create(model="claude-sim-sonnet", max_tokens=64, messages=[
        {"role": "user", "content": "something bad [[fault:refusal]]"}])
    no_extras(message)
    assert message.stop_reason == "refusal" and message.usage.output_tokens > 0


@pytest.mark.parametrize("kwargs,prompt,exc,status,kind", [
    ({"model": "claude-nope"}, "hi", anthropic.NotFoundError, 404, "not_found_error"),
    ({"extra_body": {"temperature": 1.5}}, "hi", anthropic.BadRequestError, 400, "invalid_request_error"),
    ({"system": None}, "hi", anthropic.BadRequestError, 400, "invalid_request_error"),
    ({}, "x [[fault:429]]", anthropic.RateLimitError, 429, "rate_limit_error"),
    ({}, "x [[fault:500]]", anthropic.InternalServerError, 500, "api_error"),
    ({}, "x [[fault:overloaded]]", anthropic.OverloadedError, 529, "overloaded_error"),
    ({}, "x [[fault:insufficient_quota]]", anthropic.BadRequestError, 400, "invalid_request_error"),
])
def test_anthropic_errors_map_to_sdk_exceptions(claude, kwargs, prompt, exc, status, kind):
    messages = [{"role": "user", "content": prompt}]
    if "system" in kwargs:  # a system message inside messages, which the Messages API refuses
        kwargs, messages = {}, [{"role": "system", "content": "be brief"}] + messages
    with pytest.raises(exc) as info:
        claude.messages.create(**({"model": "claude-sim-sonnet", "max_tokens": 32, "messages": messages} | kwargs))
    assert info.value.status_code == status and info.value.body["error"]["type"] == kind
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.request_id == info.value.body["request_id"]


def test_anthropic_authentication_and_stream_error(sim, claude):
    with anthropic.Anthropic(base_url=sim.url, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model="claude-sim-sonnet", max_tokens=8, messages=USER)
    with pytest.raises(anthropic.APIStatusError) as info:  # an `event: error` after the stream started
        with claude.messages.stream(model="claude-sim-sonnet", max_tokens=64, messages=[
                {"role": "user", "content": "x [[fault:error_body]]"}]) as stream:
            stream.get_final_message()
    assert "Overloaded" in str(info.value)


def test_anthropic_sdk_retry_honours_retry_after(sim):
    sim.reset()
    with anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=2) as client:
        started = time.monotonic()
        out = client.messages.create(model="claude-sim-sonnet", max_tokens=64,
                                     messages=[{"role": "user", "content": "busy [[fault:429*2]]"}])
        elapsed = time.monotonic() - started
    assert out.content[0].text
    stats = sim.stats()
    assert stats["requests"] == 3 and stats["faults"] == {"429": 2}
    assert 1.2 <= elapsed < 3.0


# -- prompt caching (decision 0028) -----------------------------------------------------------------
RUBRIC = "Grade the review against the quality rubric, item by item, and say which label fits best. " * 80


def test_openai_cached_tokens_parse_strictly(oai):
    for row in ("review 1", "review 2"):
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "system", "content": RUBRIC}, {"role": "user", "content": row}])
        completion = strict(ChatCompletion, raw_json(raw))
    usage = completion.usage  # the second request: its prefix was seen by the first
    cached = usage.prompt_tokens_details.cached_tokens
    assert 1024 <= cached <= usage.prompt_tokens and cached % 128 == 0


def test_anthropic_cache_control_writes_then_reads_and_parses_strictly(claude):
    system = [{"type": "text", "text": RUBRIC, "cache_control": {"type": "ephemeral"}}]

    def ask(row: str) -> Message:
        raw = claude.messages.with_raw_response.create(model="claude-sim-sonnet", max_tokens=32, system=system,
                                                       messages=[{"role": "user", "content": row}])
        return strict(Message, raw_json(raw))

    first, second = ask("review 1"), ask("review 2")
    written = first.usage.cache_creation_input_tokens
    assert written >= 1024 and first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
    assert (second.usage.cache_read_input_tokens, second.usage.cache_creation_input_tokens) == (written, 0)
    assert second.usage.input_tokens < 20  # input_tokens excludes the cached prefix
    with claude.messages.stream(model="claude-sim-sonnet", max_tokens=32, system=system,
                                messages=[{"role": "user", "content": "review 3"}]) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == written and final.usage.input_tokens < 20
    too_many = [{"type": "text", "text": str(i), "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks with cache_control"):
        claude.messages.create(model="claude-sim-sonnet", max_tokens=8, system=too_many, messages=USER)
