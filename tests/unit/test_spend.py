"""spend.py: the worst-case estimate is never below what is billed, and SpendLimit never lets
spent + reserved exceed its cap (across threads, with waiting reservations)."""
import asyncio
import json
import random
import threading

import pytest

from dbt_pg_llm import ModelConfig, ModelInput, ResponseFormat, SpendLimit, estimate_cost
from dbt_pg_llm.simulator import answers as sim_answers
from dbt_pg_llm.models.spend import STRUCTURED_OUTPUT_TOKENS, active_limit, estimate_prompt_tokens, using_limit

AWKWARD = ["", "a", "tab\there", "café 日本語", "emoji 😀👍🏽", "x" * 1001, "  spaced  ", "\x00nul", "é" * 37]


@pytest.mark.parametrize("system", [None, "", "Answer briefly.", "Système: réponds 日本"])
@pytest.mark.parametrize("prompt", AWKWARD)
def test_prompt_estimate_is_never_below_the_simulators_count(system, prompt):
    inp = ModelInput(prompt, system_message=system)
    contents = [c for c in (system, prompt) if c] or [""]
    assert estimate_prompt_tokens(inp) >= sim_answers.prompt_tokens(contents)
    # and never below a byte-level BPE tokenizer's count: at least one byte per token
    assert estimate_prompt_tokens(inp) >= len(prompt.encode("utf-8")) + len((system or "").encode("utf-8"))


def test_schemas_and_labels_count_in_the_estimate_with_a_tool_prompt_allowance():
    schema = {"type": "object", "properties": {"product": {"type": "string"}}}
    plain = ModelInput("x")
    extract = ModelInput("x", response_format=ResponseFormat.json(schema))
    classify = ModelInput("x", response_format=ResponseFormat.one_of(["positive", "négatif"]))
    extra = STRUCTURED_OUTPUT_TOKENS
    assert estimate_prompt_tokens(extract) >= estimate_prompt_tokens(plain) + len(json.dumps(schema)) + extra
    assert estimate_prompt_tokens(classify) >= estimate_prompt_tokens(plain) + len('["positive", "négatif"]') + extra
    assert STRUCTURED_OUTPUT_TOKENS >= 350  # Anthropic's tool-use system prompt is billed as input


def test_estimate_cost_is_prompt_bound_plus_max_tokens_at_their_prices():
    config = ModelConfig.from_dict({"api_url": "http://x/v1", "model_version": "m", "max_tokens": 100,
                                    "cost_per_1k_input_tokens": 2.0, "cost_per_1k_output_tokens": 10.0})
    inp = ModelInput("hello")
    assert estimate_cost(config, inp) == pytest.approx((estimate_prompt_tokens(inp) * 2.0 + 100 * 10.0) / 1000)
    assert estimate_cost(config, ModelInput("hello", max_tokens=7)) == pytest.approx(
        (estimate_prompt_tokens(inp) * 2.0 + 7 * 10.0) / 1000)


def test_reserve_settle_refund_and_refuse():
    limit = SpendLimit(1.0)
    first = limit.try_reserve(0.6)
    assert first is not None and limit.reserved_usd == pytest.approx(0.6)
    assert limit.try_reserve(0.5) is None and limit.refused == 1  # 0.6 + 0.5 > 1
    first.settle(0.1)  # the answer cost less than its worst case: the rest comes back
    assert (limit.spent_usd, limit.reserved_usd) == (pytest.approx(0.1), 0.0)
    second = limit.try_reserve(0.9)
    assert second is not None
    second.release()
    second.settle(0.5)  # settling twice does nothing
    assert limit.spent_usd == pytest.approx(0.1)
    third = limit.try_reserve(0.2)
    third.keep()  # unknown outcome: the whole reservation counts as spent
    assert limit.spent_usd == pytest.approx(0.3)
    assert SpendLimit(None).try_reserve(1e9) is not None  # no cap: counting only
    with pytest.raises(ValueError):
        SpendLimit(0)


def test_reserve_waits_for_in_flight_refunds_and_refuses_what_can_never_fit():
    async def scenario():
        limit = SpendLimit(1.0, spent_usd=0.2)
        held = limit.try_reserve(0.7)
        waiting = asyncio.ensure_future(limit.reserve(0.5))  # fits only once `held` gives money back
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert await limit.reserve(0.9) is None  # 0.2 spent + 0.9 > 1 even if `held` cost nothing
        held.settle(0.1)
        got = await asyncio.wait_for(waiting, 1)
        assert got is not None and got.amount == 0.5
        late = asyncio.ensure_future(limit.reserve(0.4))  # 0.3 spent + 0.5 held + 0.4 > 1: waits ...
        await asyncio.sleep(0.01)
        got.settle(0.5)  # ... and 0.8 spent + 0.4 > 1: refused once `got` settles
        assert await asyncio.wait_for(late, 1) is None
        return limit

    limit = asyncio.run(scenario())
    assert limit.spent_usd == pytest.approx(0.8) and limit.reserved_usd == 0.0


def test_nothing_reserved_once_nothing_is_in_flight_whatever_the_float_residue():
    limit = SpendLimit(1.0)
    first, second = limit.try_reserve(0.1), limit.try_reserve(0.2)
    first.release()
    second.release()  # 0.1 + 0.2 - 0.1 - 0.2 is 2.8e-17 in floats: a waiter would wait for nobody
    assert limit.reserved_usd == 0.0


def test_threads_never_push_spent_plus_reserved_over_the_cap():
    limit = SpendLimit(5.0)
    seen: list[float] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(2000):
            r = limit.try_reserve(rng.uniform(0.01, 0.3))
            with lock:
                seen.append(limit.spent_usd + limit.reserved_usd)
            if r is not None:
                r.settle(r.amount * rng.random())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) <= 5.0 + 1e-9 and limit.spent_usd <= 5.0 + 1e-9 and limit.reserved_usd == pytest.approx(0.0)


def test_the_active_limit_is_a_context_variable_inherited_by_tasks():
    limit = SpendLimit(1.0)

    async def scenario():
        with using_limit(limit):
            inner = await asyncio.ensure_future(_read_active())
        return inner, active_limit()

    inner, after = asyncio.run(scenario())
    assert inner is limit and after is None


async def _read_active():
    return active_limit()
