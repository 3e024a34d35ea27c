"""The spend cap is hard: real HTTP to the simulator, and its ledger (GET /_stats) never bills more
than the SpendLimit's cap -- with 256 requests in flight, retries of billed attempts, timeouts the
simulator bills later, failover to a backup model, a cascade strategy and two threads sharing it."""
from __future__ import annotations

import time

import pytest

from dbt_pg_llm import (BatchInput, Engine, ErrorKind, InferenceStrategy, MemoryBackend, Model, ModelInput, ResponseFormat,
                        ResultCache, SpendLimit, StrategyModel, estimate_cost)
from dbt_pg_llm.models.batch import pack_prompt
from dbt_pg_llm.simulator import SimulatorConfig
from dbt_pg_llm.simulator.answers import LABELS_PHRASE

pytestmark = pytest.mark.functional

PRICES = {"small": (0.5, 1.5), "large": (2.5, 10.0)}  # $ per 1k tokens (input, output): model = simulator
SCHEMA = {"type": "object", "properties": {"product": {"type": "string"}, "ok": {"type": "boolean"}},
          "required": ["product", "ok"]}


def priced_sim(simulator_factory, tier="small", **config):
    cin, cout = PRICES[tier]
    return simulator_factory(SimulatorConfig(cost_per_1k_input=cin, cost_per_1k_output=cout, **config))


def model(name, sim, tier="small", **extra) -> Model:
    cin, cout = PRICES[tier]
    config = {"api_url": sim.base_url, "model_version": f"sim-{tier}", "max_tokens": 32, "max_concurrency": 256,
              "timeout_ms": 5000, "cost_per_1k_input_tokens": cin, "cost_per_1k_output_tokens": cout,
              "retry": {"max_retries": 0}}
    config.update(extra)
    return Model(name, config)


def engine_of(*models) -> Engine:
    return Engine(list(models), cache=ResultCache(MemoryBackend()))


def prompts(n, tag="p"):
    return [f"review {tag} {i}: the kettle works fine but the lid {'squeaks' * (i % 3)}" for i in range(n)]


def run(engine, name, items, limit, fmt=None, system=None, window=256):
    fmt = fmt or ResponseFormat.text()
    inputs = ((p, ModelInput(p, system_message=system, response_format=fmt)) for p in items)
    return [out for _, out in engine.map_unordered(name, inputs, window=window, spend_limit=limit)]


def billed(*sims) -> float:
    return sum(s.stats()["cost_usd"] for s in sims)


def worst_case(engine, name, text, fmt=None) -> float:
    m = engine.model(name)
    inp = ModelInput(text, response_format=fmt or ResponseFormat.text()).with_defaults(m.config.temperature,
                                                                                        m.config.max_tokens)
    return estimate_cost(m.config, inp)


def test_256_in_flight_never_bill_more_than_the_cap(simulator_factory):
    sim = priced_sim(simulator_factory, latency_ms=200)
    engine = engine_of(model("small", sim))
    items = prompts(2500)
    one = engine.call("small", ModelInput(items[0]), use_cache=False).cost_usd
    sim.reset()
    cap = 1300 * one  # about half of what the 2500 keys cost: hit mid-run, and room for 256 worst cases
    assert cap > 256 * worst_case(engine, "small", max(items, key=len))
    try:
        outputs = run(engine, "small", items, SpendLimit(cap))
    finally:
        engine.close()
    ledger = sim.stats()
    skipped = [o for o in outputs if o.error_kind is ErrorKind.BUDGET]
    answered = [o for o in outputs if o.ok]
    assert ledger["cost_usd"] <= cap
    assert ledger["max_in_flight"] >= 200  # the window really had ~256 requests in flight
    assert skipped and answered and len(skipped) + len(answered) == 2500
    assert all(o.attempts == 0 and o.cost_usd == 0 for o in skipped)  # refused: never sent, nothing paid
    assert ledger["requests"] == len(answered)
    assert sum(o.cost_usd for o in answered) == pytest.approx(ledger["cost_usd"])
    metrics = engine.model("small").metrics  # refusals are not model failures: no error-rate alert, breaker closed
    assert metrics.request_count == len(answered) + 1 and metrics.error_count == 0  # + the probe
    assert engine.model("small").breaker.allow()
    # the cap is used, not just respected: it refuses only when the next worst case no longer fits
    assert ledger["cost_usd"] > cap - worst_case(engine, "small", max(items, key=len))


def test_retries_of_billed_attempts_and_late_billed_timeouts_stay_under_the_cap(simulator_factory):
    # 500s are retried and cost nothing; "stall" answers come after our timeout (retried too), and
    # the simulator bills them anyway: their reservation must stay spent; "length" answers are
    # billed and rejected (invalid JSON).
    sim = priced_sim(simulator_factory, latency_ms=5)
    engine = engine_of(model("small", sim, timeout_ms=1000, retry={
        "max_retries": 3, "base_delay_ms": 1, "max_delay_ms": 5, "retryable_errors": ["invalid_output", "api", "timeout"]}))
    fmt = ResponseFormat.json(SCHEMA)
    items = prompts(600, "retry")
    cap = 400 * engine.call("small", ModelInput(items[0], response_format=fmt), use_cache=False).cost_usd
    sim.configure(stall_s=1.5, faults={"length": 0.1, "500": 0.3, "stall": 0.03})
    sim.reset()
    try:
        outputs = run(engine, "small", items, SpendLimit(cap), fmt)
    finally:
        engine.close()
    time.sleep(1.7)  # the stalled requests are billed when the simulator finally answers them
    ledger = sim.stats()
    assert ledger["faults"].get("stall", 0) > 0 and ledger["faults"].get("length", 0) > 0
    # retries happened: every 500 is retried unless the cap refuses the retry (counted per output
    # only when the retry was sent, which the cap's timing makes vary between 8 and 23 here)
    assert ledger["faults"].get("500", 0) > 10 and any(o.attempts > 1 for o in outputs)
    assert any(o.error_kind is ErrorKind.BUDGET for o in outputs)
    assert ledger["cost_usd"] <= cap


def test_failover_to_a_backup_model_shares_the_cap(simulator_factory):
    primary_sim = priced_sim(simulator_factory, latency_ms=10, faults={"length": 1.0})  # billed, invalid JSON
    backup_sim = priced_sim(simulator_factory, "large", latency_ms=10)
    engine = engine_of(model("primary", primary_sim, fallbacks=["backup"]), model("backup", backup_sim, "large"))
    fmt = ResponseFormat.json(SCHEMA)
    items = prompts(400, "failover")
    cap = 150 * engine.call("backup", ModelInput(items[0], response_format=fmt), use_cache=False).cost_usd
    backup_sim.reset()
    try:
        outputs = run(engine, "primary", items, SpendLimit(cap), fmt)
    finally:
        engine.close()
    served = [o for o in outputs if o.ok]
    assert served and all(o.model == "backup" for o in served)
    assert any(o.error_kind is ErrorKind.BUDGET for o in outputs)
    assert primary_sim.stats()["cost_usd"] > 0 and backup_sim.stats()["cost_usd"] > 0
    assert billed(primary_sim, backup_sim) <= cap


def test_cascade_strategy_members_share_the_cap(simulator_factory):
    small_sim = priced_sim(simulator_factory, latency_ms=10)
    large_sim = priced_sim(simulator_factory, "large", latency_ms=10)
    engine = engine_of(model("small", small_sim), model("large", large_sim, "large"))
    engine.register(StrategyModel("smart", InferenceStrategy.cascade(["small", "large"], min_confidence=1.0), engine))
    labels = ["positive", "negative", "neutral"]
    system = f"{LABELS_PHRASE}{' | '.join(labels)}"
    items = prompts(500, "cascade")
    cap = 120 * worst_case(engine, "large", items[0]) / 3
    try:
        outputs = run(engine, "smart", items, SpendLimit(cap), ResponseFormat.one_of(labels), system)
    finally:
        engine.close()
    assert large_sim.stats()["requests"] > 0 and small_sim.stats()["requests"] > 0  # it escalated
    assert any(o.error_kind is ErrorKind.BUDGET for o in outputs) and any(o.ok for o in outputs)
    assert billed(small_sim, large_sim) <= cap
    # every key escalates (min_confidence 1.0): an answer without the large model's is not the cascade's
    assert sum(o.ok for o in outputs) <= large_sim.stats()["requests"]


def test_two_threads_filling_two_models_share_one_limit(simulator_factory, in_threads):
    sim_a = priced_sim(simulator_factory, latency_ms=20)
    sim_b = priced_sim(simulator_factory, "large", latency_ms=20)
    engine = engine_of(model("a", sim_a), model("b", sim_b, "large"))
    limit = SpendLimit(150 * worst_case(engine, "b", prompts(1)[0]) / 2)
    try:
        both = in_threads(lambda name: run(engine, name, prompts(600, name), limit), [("a",), ("b",)])
    finally:
        engine.close()
    results = dict(zip("ab", both))
    for name in ("a", "b"):
        assert any(o.ok for o in results[name]) and any(o.error_kind is ErrorKind.BUDGET for o in results[name])
    assert billed(sim_a, sim_b) <= limit.cap_usd
    assert limit.spent_usd == pytest.approx(billed(sim_a, sim_b)) and limit.reserved_usd == pytest.approx(0.0)


def test_packed_batch_requests_reserve_their_worst_case(simulator_factory):
    sim = priced_sim(simulator_factory, latency_ms=10)
    small = model("small", sim)
    items = prompts(200, "batch")
    packed_worst = estimate_cost(small.config, ModelInput(pack_prompt(items[:8], ResponseFormat.text()), max_tokens=32 * 8))
    limit = SpendLimit(4 * packed_worst)
    try:
        out = small.batch_call(BatchInput([ModelInput(p) for p in items], batch_size=8), spend_limit=limit)
    finally:
        engine_of(small).close()  # closes the model's HTTP client
    ledger = sim.stats()
    assert out.packed_requests > 0 and any(o.ok for o in out.outputs)
    assert any(o.error_kind is ErrorKind.BUDGET for o in out.outputs)
    assert 0 < ledger["cost_usd"] <= limit.cap_usd
