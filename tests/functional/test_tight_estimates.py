"""Estimates that are upper bounds and tight, and a cap that uses its budget (issue 17.2): real HTTP
to the simulator and its ledger, an embedded Postgres for the estimate."""
from __future__ import annotations

import pytest

from dbt_pg_llm import (BufferedSink, Engine, InferenceStrategy, MemoryBackend, Model, ResultCache, StrategyModel,
                        estimate_cost)
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.pg.estimate import callable_members, estimate_column
from dbt_pg_llm.pg.migrations import ensure_migrated
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

PRICES = {"small": (0.5, 1.5), "large": (2.5, 10.0)}  # $ per 1k tokens (input, output), simulator = model
LABELS = ["positive", "negative", "neutral"]


def model(name, sim, tier="small", **extra) -> Model:
    cin, cout = PRICES[tier]
    config = {"api_url": sim.base_url, "model_version": f"sim-{tier}", "max_tokens": 200, "max_concurrency": 64,
              "timeout_ms": 5000, "cost_per_1k_input_tokens": cin, "cost_per_1k_output_tokens": cout,
              "retry": {"max_retries": 0}, **extra}
    return Model(name, config)


def reviews(n, tag="r"):
    return [f"Review {tag} {i}: the kettle {'works fine' if i % 3 else 'is awful'}, the lid "
            f"{'squeaks ' * (i % 4)}and it arrived on time." for i in range(n)]


def classify_spec(model_name: str) -> ColumnSpec:
    return ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS,
                                 "instructions": "Classify the sentiment of this review."}, model_name)


@pytest.mark.parametrize("tokenizer", ["simulator", "auto"])
def test_a_capped_classify_fill_spends_90_percent_of_its_cap_and_never_more(simulator_factory, db, tokenizer):
    """Failed before: each request reserved max_tokens (200) of output and 512 schema tokens, ~30x
    its cost, so a cap stopped with a third of it unspent. Now the reservation is the simulator's
    exact count (tokenizer: simulator), or the byte bound (auto: any server), and never below it."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=PRICES["small"][0],
                                            cost_per_1k_output=PRICES["small"][1]))
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f'create table "{schema}".reviews (body text)')
        cur.executemany(f'insert into "{schema}".reviews values (%s)', [(r,) for r in reviews(400)])
    engine = Engine([model("sim", sim, tokenizer=tokenizer)], cache=ResultCache(MemoryBackend()),
                    sinks=[BufferedSink()])
    cap = 3.5  # ~100 of the 400 requests (~$0.033 each)
    try:
        report = fill_column(connect, engine, f'"{schema}".reviews', classify_spec("sim"), audit_schema=audit,
                             run=RunContext(run_id=f"cap-{tokenizer}"), window=64, max_cost_usd=cap)
    finally:
        engine.close()
    ledger = sim.stats()["cost_usd"]
    config = engine.registry.get("sim").config
    worst = max(estimate_cost(config, classify_spec("sim").model_input(text)) for text in reviews(400))
    print(f"\n[cap] tokenizer={tokenizer}: cap ${cap} billed ${ledger:.6f} ({ledger / cap:.1%}), "
          f"{sim.stats()['requests']} requests, {report.budget_skipped} keys skipped for budget, "
          f"worst case ${worst:.4f}")
    assert report.budget_skipped > 0  # the cap did stop the fill
    assert cap - worst <= ledger <= cap  # stopped by a request that did not fit, not earlier (0009)
    if tokenizer == "simulator":  # the simulator's exact count: a worst case is about one request
        assert ledger >= 0.9 * cap
    assert worst <= 0.15 * cap  # was 0.68 (a fifth of the cap) with max_tokens 200 out and 512 schema tokens


def test_the_estimate_of_a_cascade_bounds_what_it_pays(simulator_factory, db):
    """Failed before: a strategy has no prices of its own, so its estimate said
    "0 output tokens at most, $0.0000" while the run paid. Now each member that may be called is
    priced once per key (a cascade: both), and the run's bill stays below the estimate."""
    connect, schema, audit = db
    small_sim = simulator_factory(SimulatorConfig(cost_per_1k_input=PRICES["small"][0],
                                                  cost_per_1k_output=PRICES["small"][1]))
    large_sim = simulator_factory(SimulatorConfig(cost_per_1k_input=PRICES["large"][0],
                                                  cost_per_1k_output=PRICES["large"][1]))
    texts = reviews(60, "c")
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f'create table "{schema}".reviews (body text)')
        cur.executemany(f'insert into "{schema}".reviews values (%s)', [(r,) for r in texts])
    small = model("small", small_sim, tokenizer="simulator")
    large = model("large", large_sim, "large", tokenizer="simulator")
    engine = Engine([small, large], cache=ResultCache(MemoryBackend()), sinks=[BufferedSink()])
    strategy = InferenceStrategy.cascade(["small", "large"], min_confidence=0.99)  # most answers escalate
    engine.register(StrategyModel("smart", strategy, engine))
    spec = classify_spec("smart")
    config = engine.registry.get("smart").config
    members, any_one = callable_members(strategy, {"small": small.config, "large": large.config}, "classify")
    conn = connect()
    try:
        ensure_migrated(conn, audit)
        est = estimate_column(conn, f'"{schema}".reviews', spec, config, spec.fingerprint(config), audit,
                              members=members, any_one=any_one)
        try:
            fill_column(connect, engine, f'"{schema}".reviews', spec, audit_schema=audit,
                        run=RunContext(run_id="cascade"), window=32)
        finally:
            engine.close()
    finally:
        conn.close()
    paid = small_sim.stats()["cost_usd"] + large_sim.stats()["cost_usd"]
    print(f"\n[estimate] cascade: {est.line()}; paid ${paid:.6f} ({small_sim.stats()['requests']} small + "
          f"{large_sim.stats()['requests']} large requests)")
    assert est.uncached_keys == len(texts) and large_sim.stats()["requests"] > 0
    assert est.completion_tokens > 0 and est.cost_usd is not None
    assert paid <= est.cost_usd <= 1.5 * paid  # an upper bound, and tight when most keys escalate
    assert "small + large, each may be called" in est.line()
    # a route calls one of its candidates: the dearest is counted, not both
    route = InferenceStrategy.route({"classify": "small"}, default="large")
    members, any_one = callable_members(route, {"small": small.config, "large": large.config}, "classify")
    assert any_one and list(members) == ["small", "large"]
