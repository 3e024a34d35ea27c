"""Provider prompt caching without a server (decision 0028): what the providers send and parse, how
tokens are priced, how a model is configured, and the simulator's cache rules."""
from __future__ import annotations

import json

import pytest

from dbt_pg_llm import ConfigError, ModelConfig, ModelInput, ResponseFormat, estimate_cost
from dbt_pg_llm.models.model_io import TokenUsage
from dbt_pg_llm.models.pricing import cache_control_min_tokens, cost_usd, prompt_cache_saving_usd
from dbt_pg_llm.models.providers import provider_for
from dbt_pg_llm.simulator.prompt_cache import CachePoint, PromptCache
from dbt_pg_llm.simulator.validate import check_request

LONG_SYSTEM = "Grade each review of a kitchen appliance carefully and consistently. " * 80  # ~5,500 chars
SHORT_SYSTEM = "Grade the review."


def config(provider="anthropic", **extra) -> ModelConfig:
    base = {"provider": provider, "api_url": "http://localhost:9/v1", "model_version": "claude-sonnet-4-5",
            "cost_per_1k_input_tokens": 3.0, "cost_per_1k_output_tokens": 15.0}
    base.update(extra)
    return ModelConfig.from_dict(base)


def body_for(cfg: ModelConfig, system: str | None, fmt=None) -> dict:
    inp = ModelInput("the kettle works", system_message=system, response_format=fmt or ResponseFormat.text())
    body, _ = provider_for(cfg, "m").build_body(inp.with_defaults(0.0, 16))
    return body


# -- Anthropic cache_control breakpoints ------------------------------------------------------------
def test_anthropic_marks_a_long_system_prompt_and_not_a_short_one():
    long_body = body_for(config(), LONG_SYSTEM)
    assert long_body["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert long_body["messages"] == [{"role": "user", "content": "the kettle works"}]  # the row comes last
    assert body_for(config(), SHORT_SYSTEM)["system"] == SHORT_SYSTEM
    assert "system" not in body_for(config(), None)
    # the structured-output tool is part of the cached prefix (tools come first): counted, not marked
    fmt = ResponseFormat.json({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    marked = body_for(config(structured_output="tool"), LONG_SYSTEM, fmt)
    assert "cache_control" in marked["system"][0] and "cache_control" not in marked["tools"][0]


def test_the_threshold_is_per_model_and_configurable():
    medium = "x" * (1500 * 4)  # ~1,500 tokens: cacheable for Sonnet 4.5 (1,024), not for Haiku 3.5 (2,048)
    assert cache_control_min_tokens(config()) == 1024
    assert cache_control_min_tokens(config(model_version="claude-3-5-haiku-latest")) == 2048
    assert cache_control_min_tokens(config(model_version="claude-opus-4-5")) == 4096
    assert isinstance(body_for(config(), medium)["system"], list)
    assert body_for(config(model_version="claude-3-5-haiku-latest"), medium)["system"] == medium
    assert isinstance(body_for(config(cache_control_min_tokens=0), SHORT_SYSTEM)["system"], list)
    assert body_for(config(cache_control_min_tokens=100_000), LONG_SYSTEM)["system"] == LONG_SYSTEM


def test_openai_requests_are_unchanged_by_caching():
    body = body_for(config("openai", model_version="gpt-4o-mini"), LONG_SYSTEM)
    assert body["messages"] == [{"role": "system", "content": LONG_SYSTEM},
                                {"role": "user", "content": "the kettle works"}]


# -- usage parsing ----------------------------------------------------------------------------------
def test_openai_cached_tokens_are_part_of_prompt_tokens():
    provider = provider_for(config("openai", model_version="gpt-4o-mini"), "m")
    data = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                      "prompt_tokens_details": {"cached_tokens": 1920}}}
    result = provider.parse_body(data, 200, {})
    assert result.tokens == TokenUsage(prompt=2006, completion=300, cached=1920, cache_write=0)


def test_anthropic_input_tokens_exclude_cache_reads_and_writes():
    provider = provider_for(config(), "m")
    data = {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 50, "output_tokens": 7, "cache_read_input_tokens": 1400,
                      "cache_creation_input_tokens": 100}}
    assert provider.parse_body(data, 200, {}).tokens == TokenUsage(1550, 7, 1400, 100)


def test_anthropic_stream_keeps_cache_counts_that_message_delta_sends_as_null():
    provider = provider_for(config(), "m")
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                              "model": "claude-sonnet-4-5", "stop_reason": None,
                                              "usage": {"input_tokens": 12, "output_tokens": 1,
                                                        "cache_read_input_tokens": 1500,
                                                        "cache_creation_input_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 3, "input_tokens": None, "cache_read_input_tokens": None}},
        {"type": "message_stop"}]
    content = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    result = provider.parse_body(provider.decode(content, "text/event-stream"), 200, {})
    assert result.tokens == TokenUsage(1512, 3, 1500, 0)


# -- prices -----------------------------------------------------------------------------------------
def test_cached_and_cache_write_prices_and_their_defaults():
    tokens = TokenUsage(prompt=2000, completion=100, cached=1500, cache_write=400)
    explicit = config(cost_per_1k_cached_input_tokens=0.3, cost_per_1k_cache_write_tokens=3.75)
    assert cost_usd(explicit, tokens) == pytest.approx((100 * 3.0 + 1500 * 0.3 + 400 * 3.75 + 100 * 15.0) / 1000)
    # unset: reads at the input price (never under-reported), writes at Anthropic's 1.25x
    assert cost_usd(config(), tokens) == pytest.approx((1600 * 3.0 + 400 * 3.75 + 100 * 15.0) / 1000)
    assert prompt_cache_saving_usd(explicit, tokens) == pytest.approx((1500 * 2.7 - 400 * 0.75) / 1000)
    assert prompt_cache_saving_usd(explicit, TokenUsage(2000, 100)) == 0.0


def test_the_worst_case_covers_a_cache_write():
    inp = ModelInput("the kettle works", system_message=LONG_SYSTEM).with_defaults(0.0, 16)
    # Anthropic may bill every input token of a marked prefix as a cache write (1.25x the input price)
    assert estimate_cost(config(), inp) > estimate_cost(config(cost_per_1k_cache_write_tokens=3.0), inp)
    plain = config("openai", model_version="gpt-4o-mini")  # OpenAI never writes: its bound is the input price
    assert estimate_cost(plain, inp) == estimate_cost(config("openai", model_version="gpt-4o-mini",
                                                             cost_per_1k_cached_input_tokens=0.3), inp)


def test_bad_cache_settings_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        config(cost_per_1k_cached_input_tokens=-1)
    assert "cost_per_1k_cached_input_tokens" in str(info.value) and ">= 0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config("openai", model_version="gpt-4o-mini", cache_control_min_tokens=1024)
    assert "cache_control_min_tokens: only used by provider 'anthropic'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config(cache_control_min_tokens="lots")
    assert "cache_control_min_tokens" in str(info.value)


# -- the simulator's caches -------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_simulated_openai_cache_prefixes_in_128_token_steps_from_1024():
    clock = Clock()
    cache = PromptCache(clock=clock)
    shared = "s" * (1100 * 4)  # 1,100 tokens of shared system prompt
    assert cache.openai("m", [shared, "row 1"], 1110) == 0  # first seen: nothing cached
    assert cache.openai("m", [shared, "row 2"], 1110) == 1024  # the longest whole 128-token prefix seen
    assert cache.openai("other-model", [shared, "row 2"], 1110) == 0  # caches are per model
    assert cache.openai("m", ["s" * 4000, "row"], 1010) == 0  # below 1,024 tokens: never cached
    clock.now += 301  # unused for longer than the TTL: gone
    assert cache.openai("m", [shared, "row 3"], 1110) == 0


def test_simulated_anthropic_cache_writes_then_reads_at_breakpoints():
    cache = PromptCache(clock=Clock())
    point = CachePoint(b"prefix", 1500, 300.0)
    assert cache.anthropic("claude-sonnet-4-5", [point], 1600) == (0, 1500)  # written on first use
    assert cache.anthropic("claude-sonnet-4-5", [point], 1600) == (1500, 0)  # read after
    assert cache.anthropic("claude-3-5-haiku", [point], 1600) == (0, 0)  # below Haiku's 2,048 minimum
    assert cache.anthropic("claude-sonnet-4-5", [], 1600) == (0, 0)  # no breakpoint, no cache


def test_simulator_refuses_malformed_cache_control_like_anthropic():
    def request(system):
        return {"model": "claude-sonnet-4-5", "max_tokens": 8, "system": system,
                "messages": [{"role": "user", "content": "hi"}]}

    ok = [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert check_request(request(ok), True) is None
    bad_type = [{"type": "text", "text": "a", "cache_control": {"type": "persistent"}}]
    assert "system.0.cache_control.type" in check_request(request(bad_type), True).anthropic_message
    five = [{"type": "text", "text": str(i), "cache_control": {"type": "ephemeral"}} for i in range(5)]
    assert "A maximum of 4 blocks with cache_control" in check_request(request(five), True).anthropic_message
