"""A cascade strategy model filling a column: real embedded Postgres, two simulator-backed members."""
from __future__ import annotations

import pytest

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.models.keys import cache_key
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column, join_sql
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

COST_IN, COST_OUT = 0.5, 1.5
MIN_CONFIDENCE = 0.5  # the simulator's confidence varies by model and prompt: some rows escalate
PROMPTS = ["I love it, great value", "terrible, it broke", "it arrived on a tuesday", "best purchase, love it",
           "awful and flimsy", "the box was blue", "works great", "meh", "I love it, great value", None, "meh"]


def settings_for(small, large) -> LlmSettings:
    def member(sim, version):
        return {"api_url": sim.base_url, "model_version": version, "retry": {"max_retries": 0},
                "cost_per_1k_input_tokens": COST_IN, "cost_per_1k_output_tokens": COST_OUT}
    return LlmSettings.from_dict({"default_model": "smart", "models": {
        "small": member(small, "sim-small"), "large": member(large, "sim-large"),
        "smart": {"strategy": "cascade", "models": ["small", "large"], "min_confidence": MIN_CONFIDENCE}}})


def q(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_cascade_fill_pays_members_once_then_nothing(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    small, large = (simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
                    for _ in range(2))
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".reviews (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".reviews (body) values (%s)', [(p,) for p in PROMPTS])
    source = f'"{schema}".reviews'
    distinct = len({p for p in PROMPTS if p is not None})
    settings = settings_for(small, large)
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body",
                                 "labels": ["positive", "negative", "neutral"]}, settings.model_for_default)
    assert spec.model == "smart"
    fp = spec.fingerprint(settings.config_for("smart"))  # what the adapter computes from the profile

    engine = build_engine(settings, journal=False, sinks=[BufferedSink()])
    try:
        assert spec.fingerprint(engine.registry.get("smart").config) == fp  # ... and what the fill uses
        rep = fill_column(connect, engine, source, spec, audit_schema=audit, run=RunContext("run-1", "model.p.r"))
        # every member answer paid for once: small for every key, large for the unsure ones
        results = q(pg_conn, f'select key, model, fingerprint, output_text, confidence, cost_usd '
                             f'from "{audit}".llm_results')
        # small was unsure of a row if large answered it, or if small kept it with a low confidence
        # (large was even less sure): both went to large
        unsure = sum(model == "large" or conf < MIN_CONFIDENCE for _, model, _, _, conf, _ in results)
        assert 0 < unsure < distinct
        assert (rep.distinct_keys, rep.requests_done, rep.errors, rep.cache_hits) == (distinct, distinct, 0, 0)
        assert (small.stats()["requests"], large.stats()["requests"]) == (distinct, unsure)
        paid = small.stats()["cost_usd"] + large.stats()["cost_usd"]
        assert rep.cost_usd == pytest.approx(paid) and paid > 0
        # llm_results holds the strategy's answers, under the strategy's key and fingerprint
        by_prompt = {p: cache_key(fp, p) for p in PROMPTS if p is not None}
        assert {r[0] for r in results} == set(by_prompt.values()) and {r[2] for r in results} == {fp}
        assert {r[1] for r in results} <= {"small", "large"}  # the member that answered
        assert float(sum(r[5] for r in results)) == pytest.approx(paid)
        # the calls log holds the members' requests
        calls = q(pg_conn, f'select model, cached, count(*) from "{audit}".llm_calls group by 1, 2 order by 1')
        assert calls == [("large", False, unsure), ("small", False, distinct)]
        # the join gives every non-NULL prompt its label
        rows = q(pg_conn, join_sql(source, [("sentiment", spec, fp)], audit) + " order by id")
        assert [r[-1] is None for r in rows] == [p is None for p in PROMPTS]
        # the members' answers are cached under their own keys: asking 'small' directly is free
        direct = engine.call("small", spec.model_input(PROMPTS[0]))
        assert direct.cached and small.stats()["requests"] == distinct
        assert engine.call("smart", spec.model_input(PROMPTS[0])).cached
    finally:
        engine.close()

    # a second fill (a fresh engine, empty memory cache): Postgres has every answer, nothing is paid
    engine2 = build_engine(settings, journal=False, sinks=[BufferedSink()])
    try:
        rep2 = fill_column(connect, engine2, source, spec, audit_schema=audit, run=RunContext("run-2", "model.p.r"))
    finally:
        engine2.close()
    assert (rep2.requests_done, rep2.cache_hits, rep2.cost_usd) == (0, distinct, 0.0)
    assert (small.stats()["requests"], large.stats()["requests"]) == (distinct, unsure)
    assert q(pg_conn, f"select model, count(*) from \"{audit}\".llm_calls where run_id = 'run-2' group by 1") \
        == [("smart", distinct)]


def test_route_by_scores_moves_off_a_model_whose_circuit_opens_mid_run(simulator_factory):
    from dbt_pg_llm import ModelInput

    small, large = (simulator_factory(SimulatorConfig()) for _ in range(2))
    member = {"retry": {"max_retries": 0}}
    settings = LlmSettings.from_dict({"default_model": "pick", "models": {
        "small": {"api_url": small.base_url, "model_version": "sim-small", **member},
        "large": {"api_url": large.base_url, "model_version": "sim-large", **member},
        "off": {"api_url": large.base_url, "model_version": "sim-large", "enabled": False},
        "pick": {"strategy": "route", "default": "large",
                 "scores": {"off": {"complete": 1.0}, "small": {"complete": 0.9}, "large": {"complete": 0.5}}}}})
    engine = build_engine(settings, journal=False)
    items = ((i, ModelInput(f"Summarize review number {i}: it works")) for i in range(80))  # task: complete
    outputs = []
    try:
        for tag, out in engine.map_unordered("pick", items, window=4):
            outputs.append(out)
            if len(outputs) == 20:  # small starts failing mid-run: its circuit opens after 5 failures
                small.configure(faults={"500": 1.0})
        breaker = engine.registry.get("small").breaker
        assert breaker.state == "open"
    finally:
        engine.close()
    failed = [o for o in outputs if not o.ok]
    by_model = {m: sum(o.model == m for o in outputs if o.ok) for m in ("small", "large", "off")}
    # 'off' (disabled, the best score) never answered; small answered until it broke; then large
    assert by_model["off"] == 0 and by_model["small"] >= 20 - 4 and by_model["large"] > 0
    assert len(outputs) == 80 and 0 < len(failed) <= breaker.failure_threshold + 4
    # nothing more reached the broken model: its requests are its answers plus the failed attempts sent
    # (a request refused by the open circuit has 0 attempts: it never reached the server)
    assert small.stats()["requests"] == by_model["small"] + sum(o.attempts for o in failed)
    assert all(o.model == "small" and o.attempts <= 1 for o in failed)
    assert large.stats()["requests"] == by_model["large"]
