"""Guaranteed cascades and evaluation as data (issue 21.2/21.3) end to end: real HTTP to a simulator
serving two models of known error rates, real embedded Postgres for llm_cascade_calibrations and
llm_evaluations."""
from __future__ import annotations

import asyncio

import pytest

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.models.guarantee import NEVER
from dbt_pg_llm.models.model_io import ModelInput
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column, join_sql
from dbt_pg_llm.pg.cascades import (calibrated, calibrations, latest_evaluations, scores_from_evaluations,
                                    store_evaluations)
from dbt_pg_llm.models.evaluation import evaluate
from dbt_pg_llm.ops.html_report import render_report_html
from dbt_pg_llm.ops.quality_report import quality_tables_html
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

LABELS = ["alpha", "beta", "gamma", "delta"]
SMALL_ERRORS, N, SAMPLE, TARGET, DELTA = 0.3, 400, 150, 0.9, 0.1
PRICE = {"small": 0.05, "large": 1.0}  # per 1k tokens, input and output


def settings_for(sim, target=TARGET) -> LlmSettings:
    def member(version, price):
        return {"api_url": sim.base_url, "model_version": version, "retry": {"max_retries": 0},
                "structured_output": "prompt", "cost_per_1k_input_tokens": price, "cost_per_1k_output_tokens": price}
    return LlmSettings.from_dict({"default_model": "sure", "models": {
        "small": member("sim-small", PRICE["small"]), "large": member("sim-large", PRICE["large"]),
        "sure": {"strategy": "cascade", "models": ["small", "large"], "target_accuracy": target,
                 "failure_probability": DELTA, "sample_size": SAMPLE},
        "meas": {"strategy": "route", "default": "small", "scores": "from_evaluations"}}})


def inputs(n: int, start: int = 0) -> list[ModelInput]:
    """A classify column's requests (its system prompt lists the labels), as a fill would make them."""
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS}, "sure")
    return [spec.model_input(f"ticket {i}: the printer on floor {i % 7} jams") for i in range(start, start + n)]


def call_all(engine, name: str, items: list[ModelInput]) -> list:
    """Every item asked of ``name`` concurrently (as a fill would), in order."""
    async def run():
        return await asyncio.gather(*(engine.acall(name, inp) for inp in items))
    return engine.loop.run(run())


def test_guaranteed_cascade_meets_target_below_oracle_cost_and_reruns_reuse(db, pg_conn, simulator_factory):
    connect, _, audit = db
    sim = simulator_factory(SimulatorConfig(model_error_rates={"sim-small": SMALL_ERRORS}))
    items = inputs(N)
    engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
    try:
        # the oracle's answers, to measure agreement (also the oracle-only cost, N requests to large)
        oracle = call_all(engine, "large", items)
        oracle_cost = sum(o.cost_usd for o in oracle)
        small_wrong = sum(s.value != o.value for s, o in zip(call_all(engine, "small", items), oracle))
        assert 0.2 < small_wrong / N < 0.4  # the knob works: sim-small is wrong ~30% of the time
        engine.close()
        engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])  # a cold cache

        assert engine.call("sure", items[0]).model == "large"  # uncalibrated: the oracle alone answers
        stored, reused = calibrated(pg_conn, audit, engine, "sure", items, seed=1)
        assert not reused and stored["sample_size"] <= SAMPLE
        threshold = stored["thresholds"][0]
        assert threshold < NEVER, stored  # a threshold was found: some keys stay with small
        assert stored["agreement_lower_bound"] >= TARGET
        outputs = call_all(engine, "sure", items)
        agreement = sum(o.value == r.value for o, r in zip(outputs, oracle)) / N
        cascade_cost = sum(o.cost_usd for o in outputs)  # the sampled keys' answers are cached: 0 here
        calib_cost = float(calibrations(pg_conn, audit)[0]["sample_cost_usd"])
        assert agreement >= TARGET, (agreement, stored)
        assert cascade_cost + calib_cost < oracle_cost, (cascade_cost, calib_cost, oracle_cost)
        answered_by_small = sum(o.model == "small" for o in outputs)
        assert answered_by_small > N * 0.2

        # a rerun with the same models and prompt reuses the stored calibration: no new requests
        engine.close()
        engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
        again, reused = calibrated(pg_conn, audit, engine, "sure", items, seed=2)
        assert reused and again["thresholds"] == stored["thresholds"]
        # another target is another strategy basis: calibrated anew
        engine.close()
        engine = build_engine(settings_for(sim, target=0.95), journal=False, sinks=[BufferedSink()])
        _, reused = calibrated(pg_conn, audit, engine, "sure", items, seed=2)
        assert not reused and len(calibrations(pg_conn, audit)) == 2
    finally:
        engine.close()


def test_evaluation_rows_and_route_scores_from_them(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(model_error_rates={"sim-small": SMALL_ERRORS}))
    items = inputs(120, start=1000)
    engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
    try:
        golden = [o.value for o in call_all(engine, "large", items)]  # sim-large makes no mistakes
        rows = evaluate(engine, ["small", "large", "sure"], items, golden, node_id="model.p.tickets",
                        column="topic", golden_name="golden_tickets")
        store_evaluations(pg_conn, audit, rows)
        by_model = {r["model"]: r for r in latest_evaluations(pg_conn, audit)}
        assert by_model["large"]["accuracy"] == 1.0
        assert 0.55 < by_model["small"]["accuracy"] < 0.85
        assert by_model["small"]["cost_per_row"] < by_model["large"]["cost_per_row"]
        assert by_model["sure"]["strategy"] == "cascade"
        deciles = by_model["small"]["calibration"]
        assert sum(d["rows"] for d in deciles) == 120
        # calibration is informative: the top deciles are more accurate than the bottom ones
        low = [d for d in deciles if d["decile"] < 4]
        high = [d for d in deciles if d["decile"] >= 6]
        assert low and high
        acc = lambda ds: sum(d["accuracy"] * d["rows"] for d in ds) / sum(d["rows"] for d in ds)  # noqa: E731
        assert acc(high) > acc(low)
        scores = scores_from_evaluations(pg_conn, audit)
        assert scores == {"small": {"classify": pytest.approx(by_model["small"]["accuracy"])},
                          "large": {"classify": 1.0}}
        # the HTML report shows them (and says when nothing is stored)
        page = render_report_html(pg_conn, audit)
        assert "Evaluations against golden sets" in page and "golden_tickets" in page and "100.0%" in page
        assert "no guaranteed cascade calibrated" in page

        # a route with scores: from_evaluations sends classify to the model measured best (large)
        with pg_conn.cursor() as cur:
            cur.execute(f'create table "{schema}".few (id serial primary key, body text)')
            cur.executemany(f'insert into "{schema}".few (body) values (%s)', [(f"note {i}",) for i in range(20)])
        spec = {"kind": "classify", "prompt_sql": "body", "labels": LABELS, "name": "topic"}
        fill_column(connect, engine, f'"{schema}".few', spec, audit_schema=audit,
                    run=RunContext("run-e", "model.p.few"), default_model="meas")
        assert engine.registry.get("meas").strategy.scores == scores
        assert q(pg_conn, f'select distinct model from "{audit}".llm_results where node_id = \'model.p.few\'') \
            == [("large",)]
    finally:
        engine.close()


def test_fill_of_a_guaranteed_cascade_calibrates_first_then_reuses(db, pg_conn, simulator_factory):
    """fill_column (what the dbt materialisation runs): the cascade calibrates on a random sample of
    the column's prompts before the fill, stores it, and the next fill reuses it."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(model_error_rates={"sim-small": SMALL_ERRORS}))
    n = 600
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".tickets (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".tickets (body) values (%s)',
                        [(f"ticket {i}: the scanner in room {i % 5} is stuck",) for i in range(n)])
    spec = {"kind": "classify", "prompt_sql": "body", "labels": LABELS, "name": "topic"}
    engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
    try:
        rep = fill_column(connect, engine, f'"{schema}".tickets', spec, audit_schema=audit,
                          run=RunContext("run-1", "model.p.tickets"), default_model="sure")
        assert rep.errors == 0
        (stored,) = calibrations(pg_conn, audit)
        assert stored["strategy"] == "sure" and stored["sample_size"] == SAMPLE and stored["thresholds"][0] < NEVER
        answers = q(pg_conn, f'select model, output_text, cost_usd from "{audit}".llm_results where model <> \'\'')
        assert len(answers) == n and {a[0] for a in answers} == {"small", "large"}
        # agreement with the oracle over every key, and the cost against asking the oracle alone
        col = ColumnSpec.from_dict(spec, "sure")
        items = [col.model_input(f"ticket {i}: the scanner in room {i % 5} is stuck") for i in range(n)]
        oracle = call_all(engine, "large", items)  # cached for the sample and escalated keys, paid for the rest
        by_prompt = {f"ticket {i}: the scanner in room {i % 5} is stuck": o.value for i, o in enumerate(oracle)}
        rows = q(pg_conn, join_sql(f'"{schema}".tickets', [("topic", col, col.fingerprint(engine.registry.get("sure")
                                                                                        .config))], audit))
        agreement = sum(r[-1] == by_prompt[r[1]] for r in rows) / n
        assert agreement >= TARGET, agreement
        oracle_only = n * min(o.cost_usd for o in oracle if not o.cached)  # every key at the cheapest price
        # the sample's requests are the run's (llm_calls rows of its run id, under its cap): in its cost
        assert rep.cost_usd >= float(stored["sample_cost_usd"]) > 0
        assert rep.cost_usd < 0.9 * oracle_only, (rep.cost_usd, oracle_only)  # measured: 19.7 vs 24.6
        shown = quality_tables_html(pg_conn, audit)
        assert "small &gt; large" in shown and f'{stored["thresholds"][0]:.2f}' in shown
    finally:
        engine.close()
    engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
    try:
        before = sim.stats()["requests"]
        fill_column(connect, engine, f'"{schema}".tickets', spec, audit_schema=audit,
                    run=RunContext("run-2", "model.p.tickets"), default_model="sure")
        assert sim.stats()["requests"] == before  # the calibration was reused, every answer was cached
        assert engine.registry.get("sure").strategy.thresholds == tuple(stored["thresholds"])
    finally:
        engine.close()


def test_the_calibration_sample_counts_against_the_runs_spend_cap(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(model_error_rates={"sim-small": SMALL_ERRORS}))
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".capped (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".capped (body) values (%s)', [(f"case {i} is open",) for i in range(300)])
    spec = {"kind": "classify", "prompt_sql": "body", "labels": LABELS, "name": "topic"}
    engine = build_engine(settings_for(sim), journal=False, sinks=[BufferedSink()])
    try:
        cap = 1.0  # the sample alone would cost ~6.7 (150 keys x both models)
        rep = fill_column(connect, engine, f'"{schema}".capped', spec, audit_schema=audit, max_cost_usd=cap,
                          run=RunContext("run-cap", "model.p.capped"), default_model="sure")
        per_request = max(PRICE.values()) * 60 / 1000  # an oracle request: < 60 tokens at its price
        assert rep.cost_usd <= cap + per_request, rep.cost_usd
    finally:
        engine.close()


def q(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()
