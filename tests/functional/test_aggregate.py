"""pg_llm.llm_aggregate's tree (issue 20.2, decision 0037) on real Postgres and the simulator over HTTP:
one answer per group, stable across runs and row order, incremental (a new row re-pays its chunk and
the path to the root, other groups nothing), a failing chunk -> NULL + dead letter, the spend cap
stopping mid-tree cleanly, and the estimate bounding what a run pays."""
from __future__ import annotations

import re

import pytest

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.operators.aggregate import SYSTEM_PHRASE, leaf_chunks, row_key, run_aggregate
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig
from dbt_pg_llm.models.tokens import token_counter

pytestmark = pytest.mark.functional
BUDGET, CHUNK_ROWS, FAN_IN = 600, 6, 3
SIZES = {"alpha": 90, "beta": 40, "gamma": 4}


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def make_table(pg_conn, schema, name, rows):
    q(pg_conn, f'create table "{schema}".{name} (id serial, product text, body text)')
    with pg_conn.cursor() as cur:
        cur.executemany(f'insert into "{schema}".{name} (product, body) values (%s, %s)', rows)
    return f'"{schema}".{name}'


def rows_of(sizes):
    return [(g, f"{g} review {i}: the strap {'broke' if i % 3 else 'held'} after {i} days") for g, n in sizes.items()
            for i in range(n)]


class Setup:
    def __init__(self, connect, audit, sim, cap=None):
        self.connect, self.audit, self.sim, self.cap = connect, audit, sim, cap
        self.settings = LlmSettings.from_dict({"default_model": "sim", "models": {"sim": {
            "api_url": sim.base_url, "model_version": "sim-small", "retry": {"max_retries": 0},
            "cost_per_1k_input_tokens": 1.0, "cost_per_1k_output_tokens": 1.0}}})
        self.config = self.settings.config_for("sim")
        self.spec = ColumnSpec.from_dict({"name": "answer", "kind": "complete", "prompt_sql": "pg_llm_prompt",
                                          "system": SYSTEM_PHRASE, "max_tokens": 40}, "sim")
        self.fp = self.spec.fingerprint(self.config)
        self.runs = 0

    def run(self, src, estimate=False, on_error="null"):
        self.runs += 1
        engine = build_engine(self.settings, journal=False, sinks=[BufferedSink()])
        run = RunContext(f"run-{self.runs}", "model.p.agg")
        try:
            return run_aggregate(
                self.connect, src, "product", "body", "Summarise the complaints", fingerprint=self.fp,
                audit_schema=self.audit, budget=BUDGET, chunk_rows=CHUNK_ROWS, fan_in=FAN_IN,
                count=token_counter(self.config).count,
                fill=None if estimate else (lambda s: fill_column(self.connect, engine, s, self.spec,
                                                                  audit_schema=self.audit, run=run, on_error=on_error,
                                                                  max_cost_usd=self.cap, claim_timeout_s=5)))
        finally:
            engine.close()

    def answers(self, keys):
        got = dict(q(self.connect_conn(), f'select key, output_text from "{self.audit}".llm_results '
                                          'where key = any(%s)', ([k for k in keys.values() if k],)))
        return {g: got.get(k) for g, k in keys.items()}

    def connect_conn(self):
        conn = self.connect()
        conn.autocommit = True
        return conn


def test_one_answer_per_group_stable_incremental(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig())
    s = Setup(connect, audit, sim)
    rows = rows_of(SIZES)
    src = make_table(pg_conn, schema, "reviews", rows)
    result, keys = s.run(src)
    answers = s.answers(keys)
    for g, n in SIZES.items():  # the root covers every row of its group, and nothing else
        assert re.fullmatch(rf"Digest [0-9a-f]{{8}} of {n} items: {g} review \d+:.*", answers[g]), answers[g]
    assert result.depth["alpha"] >= 3 and result.depth["gamma"] == 1  # alpha really is a tree
    first = sim.stats()["requests"]
    assert first == result.requested == sum(result.nodes_by_level)  # each node paid once, nothing more
    # warm rerun, rows stored in the reverse order: same keys, nothing requested
    shuffled = make_table(pg_conn, schema, "reviews_reversed", list(reversed(rows)))
    again, keys2 = s.run(shuffled)
    assert keys2 == keys and again.requested == 0 and sim.stats()["requests"] == first
    # one new row in alpha (not itself a chunk boundary): its chunk and the path to the root, nothing else
    new = next(t for t in (f"alpha review new {i}: the buckle snapped" for i in range(100))
               if int.from_bytes(__import__("hashlib").sha256(row_key(None, t).encode()).digest()[:8], "big")
               % CHUNK_ROWS)
    q(pg_conn, f"insert into {src} (product, body) values ('alpha', %s)", (new,))
    third, keys3 = s.run(src)
    repaid = sim.stats()["requests"] - first
    print(f"\n[aggregate] nodes per level {result.nodes_by_level}, first run {first} requests; "
          f"+1 row in alpha: re-paid {repaid} (alpha depth {third.depth['alpha']}) per level {third.missing_by_level} nodes {third.nodes_by_level}")
    assert repaid == third.depth["alpha"] == third.requested
    assert keys3["beta"] == keys["beta"] and keys3["gamma"] == keys["gamma"] and keys3["alpha"] != keys["alpha"]
    assert f"of {SIZES['alpha'] + 1} items" in s.answers(keys3)["alpha"]


def test_failing_chunk_nulls_its_group_only(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig())
    s = Setup(connect, audit, sim)
    rows = rows_of(SIZES) + [("beta", "beta review poison [[fault:400]]")]
    src = make_table(pg_conn, schema, "reviews", rows)
    result, keys = s.run(src)
    answers = s.answers(keys)
    assert keys["beta"] is None and answers["beta"] is None
    assert "of 90 items" in answers["alpha"] and "of 4 items" in answers["gamma"]
    dead = q(pg_conn, f'select count(*), min(node_id) from "{audit}".llm_errors where resolved_at is null')
    assert dead == [(1, "model.p.agg")]  # the one failed chunk, nothing above it was asked
    with pytest.raises(Exception, match="400|invalid|fail"):
        s.run(src, on_error="fail")


def test_spend_cap_stops_mid_tree_and_estimate_bounds_the_run(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=1.0, cost_per_1k_output=1.0))
    s = Setup(connect, audit, sim)
    src = make_table(pg_conn, schema, "reviews", rows_of(SIZES))
    estimate, _ = s.run(src, estimate=True)
    assert sim.stats()["requests"] == 0  # an estimate requests nothing
    full, _ = s.run(src)
    paid = sim.stats()["requests"]
    print(f"\n[aggregate] estimate {estimate.estimate} (leaves {estimate.missing_by_level[0]} exact + "
          f"<= {estimate.upper_bound} above) vs {paid} paid")
    assert estimate.missing_by_level[0] == full.missing_by_level[0]  # leaves exactly
    assert paid <= estimate.estimate
    # a fresh audit schema, a cap that pays the leaves but not the whole tree
    cost = sim.stats()["cost_usd"]
    capped = Setup(connect, audit + "_cap", sim, cap=cost * 0.6)
    try:
        before = sim.stats()["requests"]
        result, keys = capped.run(src)  # no exception: the groups past the cap are NULL
        spent = sim.stats()["cost_usd"] - cost
        assert spent <= cost * 0.6 + 1e-9
        assert any(k is None for k in keys.values()) and sim.stats()["requests"] > before
        budget = q(pg_conn, f'select count(*) from "{audit}_cap".llm_errors where error_kind = %s', ("budget",))
        assert budget[0][0] > 0
        runs = q(pg_conn, f'select sum(requests) from "{audit}_cap".llm_runs')[0][0]
        assert runs == sim.stats()["requests"] - before  # what was paid is in llm_runs
    finally:
        q(pg_conn, f'drop schema if exists "{audit}_cap" cascade')
