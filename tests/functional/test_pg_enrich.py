"""fill_column / join_sql against the real embedded Postgres and the real Engine + LLM API simulator."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest

from dbt_pg_llm import BufferedSink, ConfigError, Engine, MemoryBackend, Model, ModelError, ResultCache, estimate_cost
from dbt_pg_llm.models.keys import cache_key
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column, join_sql
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

AWKWARD = ["tab\there", "new\nline", "back\\slash", "quotes ' \" ", "café 日本語", "emoji 😀👍🏽", "",
           "  spaced  "]
COST_IN, COST_OUT = 0.5, 1.5  # $ per 1k tokens, the same in the simulator and the model config


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_engine(sim, *, name="sim", cost=False, max_retries=0, cache=True, **config) -> Engine:
    settings = {"api_url": sim.base_url, "model_version": "sim-small", "api_key": "sk-test-0123456789",
                "retry": {"max_retries": max_retries, "base_delay_ms": 1, "max_delay_ms": 10},
                "max_concurrency": 32}
    if cost:
        settings.update(cost_per_1k_input_tokens=COST_IN, cost_per_1k_output_tokens=COST_OUT)
    settings.update(config)
    return Engine([Model(name, settings)], cache=ResultCache(MemoryBackend()) if cache else None,
                  sinks=[BufferedSink()])


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def make_source(conn, schema, prompts, table="reviews"):
    with conn.cursor() as cur:
        cur.execute(f'create table "{schema}"."{table}" (id serial primary key, body text, key text, model text)')
        for p in prompts:
            cur.execute(f'insert into "{schema}"."{table}" (body, key, model) values (%s, %s, %s)',
                        (p, "collide", "collide"))
    return f'"{schema}"."{table}"'


def spec(kind="complete", **kw):
    base = {"kind": kind, "prompt_sql": "body"}
    base.update(kw)
    return ColumnSpec.from_dict(base, default_model="sim")


@pytest.fixture
def sim(simulator):
    simulator.reset()
    return simulator


# -- specs ----------------------------------------------------------------------------------------
def test_spec_validation_names_key_and_fix():
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "x"}, "m")
    assert "column.labels" in str(info.value) and "labels: [" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "x"}, "m")
    assert "column.schema" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "summarize", "prompt_sql": "x"}, "m")
    assert "column.kind" in str(info.value) and "complete, classify, extract" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "complete", "prompt": "x"}, "m")
    assert "column.prompt" in str(info.value) and "prompt_sql" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "x"}, None)
    assert "column.model" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "x", "max_tokens": -1, "temperature": 9}, "m")
    assert len(info.value.problems) == 2
    # None values of keys that do not apply are fine (the macros pass every key)
    s = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "x", "labels": ["a", "b"], "system": None,
                              "schema": None, "instructions": "Be brief.", "model": None}, "m")
    assert s.model == "m"
    assert s.model_input("p").system_message == (
        'Be brief.\n\nAnswer with exactly one of these labels and nothing else: ["a", "b"]')
    e = ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "x", "schema": {"type": "object"}}, "m")
    assert e.model_input("p").system_message == 'Reply with JSON only, matching this JSON schema: {"type":"object"}'
    assert e.model_input("p").response_format.type == "json"


# -- the fill -------------------------------------------------------------------------------------
def test_one_request_per_distinct_key_then_zero(db, pg_conn, sim):
    connect, schema, audit = db
    prompts = [f"review {i % 20}" for i in range(50)] + AWKWARD + [None] * 5
    source = make_source(pg_conn, schema, prompts)
    s = spec()
    run = RunContext(run_id="run-1", node_id="model.p.enriched", target="dev")
    engine = make_engine(sim)
    progress = []
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=run, progress=progress.append)
    finally:
        engine.close()
    n_distinct = 20 + len(AWKWARD)
    assert (rep.rows, rep.distinct_keys, rep.cache_hits, rep.requests_done, rep.errors) == (
        len(prompts), n_distinct, 0, n_distinct, 0)
    stats = sim.stats()
    assert stats["requests"] == n_distinct
    assert set(stats["by_prompt_sha256"].values()) == {1}
    assert set(stats["by_prompt_sha256"]) == {sha(p) for p in prompts if p is not None}
    assert progress[-1]["requests_done"] == n_distinct and progress[-1]["eta_s"] == 0.0
    assert {"rows", "distinct_keys", "cache_hits", "requests_done", "requests_total", "errors", "tokens",
            "cost_usd", "eta_s"} <= set(progress[-1])

    # the join: every non-null prompt has its answer; NULL prompt -> NULL; keys agree with Python
    model_config = make_engine(sim).registry.get("sim").config
    fp = s.fingerprint(model_config)
    rows = q(pg_conn, join_sql(source, [("summary", s, fp)], audit) + " order by id")
    assert len(rows) == len(prompts)
    assert [r[0] for r in rows] == list(range(1, len(prompts) + 1))
    stored = dict(q(pg_conn, f'select key, output_text from "{audit}".llm_results'))
    for (_, body, _, _, summary) in rows:
        if body is None:
            assert summary is None
        else:
            assert summary is not None and summary == stored[cache_key(fp, body)]
    calls = q(pg_conn, f'select run_id, node_id, operation, cached, count(*) from "{audit}".llm_calls group by 1,2,3,4')
    assert calls == [("run-1", "model.p.enriched", "complete", False, n_distinct)]

    # second run with a fresh engine (empty in-memory cache): Postgres answers everything
    engine2 = make_engine(sim)
    try:
        rep2 = fill_column(connect, engine2, source, s, audit_schema=audit, run=RunContext("run-2", "model.p.enriched"))
    finally:
        engine2.close()
    assert (rep2.requests_done, rep2.cache_hits, rep2.cost_usd) == (0, n_distinct, 0.0)
    assert sim.stats()["requests"] == n_distinct
    assert q(pg_conn, f"select count(*) from \"{audit}\".llm_calls where run_id = 'run-2' and cached") == [(n_distinct,)]
    runs = q(pg_conn, f'select run_id, rows, distinct_keys, requests, cache_hits, errors from "{audit}".llm_runs order by 1')
    assert runs == [("run-1", len(prompts), n_distinct, n_distinct, 0, 0),
                    ("run-2", len(prompts), n_distinct, 0, n_distinct, 0)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]


def test_percent_signs_in_source_and_prompt_sql(db, pg_conn, sim):
    """'%' in user SQL (LIKE patterns, the modulo operator) must reach Postgres untouched."""
    connect, schema, audit = db
    bodies = ["apple", "banana", "apple", "cherry", "date", None, "plum", "banana"]
    table = make_source(pg_conn, schema, bodies)
    source = f"(select * from {table} where body like '%a%')"
    s = spec(prompt_sql="'Rate ' || (id % 3) || ': ' || body")
    expected = {f"Rate {i % 3}: {b}" for i, b in enumerate(bodies, 1) if b is not None and "a" in b}
    engine = make_engine(sim)
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("run-%1", "model.p.o'%s"))
        fp = s.fingerprint(engine.registry.get("sim").config)
    finally:
        engine.close()
    assert (rep.rows, rep.distinct_keys, rep.requests_done, rep.errors) == (5, len(expected), len(expected), 0)
    assert set(sim.stats()["by_prompt_sha256"]) == {sha(p) for p in expected}
    # second run: every key is a Postgres hit, logged with the run's (quoted) ids
    engine2 = make_engine(sim)
    try:
        rep2 = fill_column(connect, engine2, source, s, audit_schema=audit, run=RunContext("run-%2", "model.p.o'%s"))
    finally:
        engine2.close()
    assert (rep2.rows, rep2.cache_hits, rep2.requests_done) == (5, len(expected), 0)
    assert q(pg_conn, f'select run_id, node_id, cached, count(*) from "{audit}".llm_calls group by 1, 2, 3 order by 1') \
        == [("run-%1", "model.p.o'%s", False, len(expected)), ("run-%2", "model.p.o'%s", True, len(expected))]
    rows = q(pg_conn, join_sql(source, [("rating", s, fp)], audit) + " order by id")
    assert [r[0] for r in rows] == [1, 2, 3, 5, 8] and all(r[-1] is not None for r in rows)


def test_classify_and_extract_columns_in_one_join(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["great product", "awful product", None, "it is ok"])
    labels = ["positive", "negative", "neutral"]
    cls = spec("classify", labels=labels)
    ext = spec("extract", prompt_sql="'Extract from: ' || body",
               schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    engine = make_engine(sim)
    try:
        for s in (cls, ext):
            rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r", "n"))
            assert rep.errors == 0 and rep.requests_done == 3
        config = engine.registry.get("sim").config
    finally:
        engine.close()
    # column names needing quotes; the prompt uses columns named like llm_results columns (key, model)
    key_model = spec(prompt_sql="key || model || body")
    sql = join_sql(source, [("Sentiment label", cls, cls.fingerprint(config)),
                            ('odd "name"', ext, ext.fingerprint(config)),
                            ("km", key_model, key_model.fingerprint(config))], audit)
    rows = q(pg_conn, sql + " order by id")
    for row in rows:
        body, label, extracted = row[1], row[4], row[5]
        if body is None:
            assert label is None and extracted is None
        else:
            assert label in labels
            assert isinstance(extracted, dict) and isinstance(extracted["city"], str)
    with pg_conn.cursor() as cur:
        cur.execute(sql + " limit 0")
        assert [d.name for d in cur.description] == ["id", "body", "key", "model", "Sentiment label",
                                                     'odd "name"', "km"]
    # explicit source columns: re-enriching a column that already exists replaces it
    sql = join_sql(source, [("body", cls, cls.fingerprint(config))], audit, source_columns=["id", "body"])
    assert {r[1] for r in q(pg_conn, sql)} <= set(labels) | {None}


def test_a_label_holding_the_old_delimiter_is_answered_as_itself(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["maybe | unsure about this one", "yes, love it", "no way"])
    s = spec("classify", labels=["maybe | unsure", "yes", "no"])
    engine = make_engine(sim)
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r"))
        fp = s.fingerprint(engine.registry.get("sim").config)
    finally:
        engine.close()
    assert rep.errors == 0 and rep.requests_done == 3
    rows = dict(q(pg_conn, f"select body, a from ({join_sql(source, [('a', s, fp)], audit)}) j"))
    assert rows == {"maybe | unsure about this one": "maybe | unsure", "yes, love it": "yes", "no way": "no"}


def test_errors_are_dead_lettered_not_cached_retried_and_resolved(db, pg_conn, sim):
    connect, schema, audit = db
    flaky, broken = "flaky [[fault:500*1]]", "broken [[fault:500]]"
    source = make_source(pg_conn, schema, ["fine one", "fine two", flaky, broken, flaky])
    s = spec()
    engine = make_engine(sim, cache=False)
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r1", "node.x"))
        assert (rep.requests_done, rep.errors) == (4, 2)
        assert rep.first_error is not None and rep.first_error.kind == "api"
        fp = s.fingerprint(engine.registry.get("sim").config)
        errors = q(pg_conn, f'select key, node_id, error_kind, attempts, resolved_at is null from "{audit}".llm_errors order by key')
        assert sorted(errors) == sorted([(cache_key(fp, flaky), "node.x", "api", 1, True),
                                         (cache_key(fp, broken), "node.x", "api", 1, True)])
        assert q(pg_conn, f'select count(*) from "{audit}".llm_results') == [(2,)]  # errors are never cached
        # the join with a default literal for failed rows
        rows = dict(q(pg_conn, f"select body, answer from ({join_sql(source, [('answer', s, fp)], audit, 'n/a')}) j"))
        assert rows[flaky] == "n/a" and rows[broken] == "n/a" and rows["fine one"] != "n/a"

        rep2 = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r2", "node.x"))
        assert (rep2.cache_hits, rep2.requests_done, rep2.errors) == (2, 2, 1)  # retried: flaky now succeeds
    finally:
        engine.close()
    errors = dict(((k, (a, r)) for k, a, r in q(
        pg_conn, f'select key, attempts, resolved_at is not null from "{audit}".llm_errors')))
    assert errors[cache_key(fp, flaky)] == (1, True)  # resolved by the successful retry
    assert errors[cache_key(fp, broken)] == (2, False)  # still failing: attempts counted
    assert sim.stats()["by_prompt_sha256"][sha(flaky)] == 2
    calls = q(pg_conn, f"select error_kind, http_status, count(*) from \"{audit}\".llm_calls where not cached "
                       "group by 1, 2 order by 1 nulls first")
    assert calls == [(None, 200, 3), ("api", 500, 3)]


def test_on_error_fail_raises_and_keeps_paid_answers(db, pg_conn, sim):
    connect, schema, audit = db
    prompts = [f"good {i}" for i in range(30)] + ["bad [[fault:500]]"]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(sim, cache=False)
    try:
        with pytest.raises(ModelError) as info:
            fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "model.p.strict"),
                        on_error="fail", window=1, chunk_rows=1000)
    finally:
        engine.close()
    err = info.value
    assert err.kind.value == "api"
    text = str(err)
    assert "model.p.strict" in text and "'sim'" in text and "on_error" in text and "1 key(s) failed" in text
    paid = sim.stats()["requests"]
    stored = q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0]
    assert stored == paid - 1  # everything answered before the failure was written (and nothing after)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]
    assert q(pg_conn, f'select status, errors from "{audit}".llm_runs') == [("failed", 1)]


def test_costs_and_tokens_equal_the_simulator_ledger(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    prompts = [f"please summarise item number {i} " * (1 + i % 5) for i in range(40)] + ["x [[fault:500]]"]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(sim, cost=True, max_retries=1)
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "n"))
    finally:
        engine.close()
    ledger = sim.stats()
    assert ledger["requests"] == 40 + 2  # the broken one was tried twice
    res = q(pg_conn, f'select sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)::float from "{audit}".llm_results')[0]
    calls = q(pg_conn, f'select sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)::float, count(*) '
                       f'from "{audit}".llm_calls where not cached')[0]
    runs = q(pg_conn, f'select prompt_tokens, completion_tokens, cost_usd::float, requests from "{audit}".llm_runs')[0]
    # 500s carry no usage, so the failed key costs nothing: every ledger figure is in llm_results too
    assert (res[0], res[1]) == (ledger["prompt_tokens"], ledger["completion_tokens"])
    assert (calls[0], calls[1], calls[3]) == (ledger["prompt_tokens"], ledger["completion_tokens"], 42)
    # "requested" = HTTP requests really sent, retries included: exactly the ledger's count
    assert (runs[0], runs[1], runs[3]) == (ledger["prompt_tokens"], ledger["completion_tokens"], ledger["requests"])
    assert rep.requests_sent == ledger["requests"] and f"{ledger['requests']} requested" in rep.summary()
    assert q(pg_conn, f'select attempts from "{audit}".llm_errors') == [(2,)]  # the real number of attempts
    assert (rep.prompt_tokens, rep.completion_tokens) == (ledger["prompt_tokens"], ledger["completion_tokens"])
    for value in (res[2], calls[2], runs[2], rep.cost_usd):
        assert value == pytest.approx(ledger["cost_usd"], rel=1e-12, abs=1e-15)
    # costs are exact decimals (no binary float tails such as 0.0027599999999999764)
    stored = q(pg_conn, f'select cost_usd::text from "{audit}".llm_runs union all '
                        f'select cost_usd::text from "{audit}".llm_results union all '
                        f'select cost_usd::text from "{audit}".llm_calls')
    assert all(len(text.partition(".")[2]) <= 10 for (text,) in stored), stored
    assert ledger["cost_usd"] > 0


def cost_of_one(engine, prompt: str) -> float:
    """What one request of ``prompt`` really costs (not cached: the fill will ask again)."""
    return engine.call("sim", spec().model_input(prompt), use_cache=False).cost_usd


def worst_case(engine, prompt: str) -> float:
    config = engine.registry.get("sim").config
    return estimate_cost(config, spec().model_input(prompt).with_defaults(config.temperature, config.max_tokens))


def test_max_cost_is_a_hard_cap_and_skipped_keys_are_budget_dead_letters(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    prompts = [f"some prompt text number {i}" for i in range(40)]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(sim, cost=True, max_tokens=16)
    cap = 20 * cost_of_one(engine, prompts[-1])  # half of what the 40 keys cost
    sim.reset()
    progress = []
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "n"),
                          max_cost_usd=cap, window=1, progress=progress.append)
    finally:
        engine.close()
    ledger = sim.stats()
    assert rep.stopped == "max_cost" and 0 < rep.requests_done < 40
    assert ledger["cost_usd"] <= cap and ledger["requests"] == rep.requests_done
    assert rep.cost_usd == pytest.approx(ledger["cost_usd"]) and rep.budget_spent_usd == pytest.approx(ledger["cost_usd"])
    assert ledger["cost_usd"] > cap - worst_case(engine, prompts[-1])  # stopped only when the next could not fit
    assert rep.budget_skipped == rep.errors == 40 - rep.requests_done and rep.budget_cap_usd == cap
    assert f"{rep.budget_skipped} key(s) skipped for budget" in rep.summary() and "cap spent" in rep.summary()
    assert progress[0]["budget_skipped"] == 0 and progress[0]["budget_cap_usd"] == cap
    assert (progress[-1]["budget_skipped"], progress[-1]["budget_spent_usd"]) == (
        rep.budget_skipped, pytest.approx(ledger["cost_usd"]))
    assert q(pg_conn, f'select error_kind, count(*) from "{audit}".llm_errors group by 1') == [
        ("budget", rep.budget_skipped)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results') == [(rep.requests_done,)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]
    # the next run (a higher cap) requests exactly the skipped keys and resolves their dead letters
    sim.reset()
    engine = make_engine(sim, cost=True, max_tokens=16)
    try:
        again = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r2", "n"),
                            max_cost_usd=100.0, window=8)
    finally:
        engine.close()
    assert again.requests_done == sim.stats()["requests"] == rep.budget_skipped and again.budget_skipped == 0
    assert q(pg_conn, f'select count(*) from "{audit}".llm_errors where resolved_at is null') == [(0,)]


def test_max_cost_with_256_in_flight_never_bills_more_than_the_cap(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=100))
    prompts = [f"a longer review text, number {i}, about a kettle" for i in range(1500)]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(sim, cost=True, max_concurrency=256, max_tokens=16)
    cap = 700 * cost_of_one(engine, prompts[-1])  # about half of what the 1500 keys cost
    assert cap > 256 * worst_case(engine, prompts[-1])  # room for the whole window
    sim.reset()
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "n"),
                          max_cost_usd=cap, window=256)
    finally:
        engine.close()
    ledger = sim.stats()
    assert ledger["max_in_flight"] >= 200
    assert rep.stopped == "max_cost" and rep.budget_skipped > 0
    assert ledger["cost_usd"] <= cap, f"billed ${ledger['cost_usd']:.4f} with a ${cap:.4f} cap"
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results') == [(ledger["requests"],)]
    assert q(pg_conn, f"select count(*) from \"{audit}\".llm_errors where error_kind = 'budget'") == [(rep.budget_skipped,)]
    assert rep.budget_skipped + ledger["requests"] == 1500


def test_two_concurrent_fills_of_one_run_share_its_cap(db, pg_conn, simulator_factory, in_threads):
    """Two dbt threads of one invocation (same run_id), two models: one budget between them."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=30))
    sources = [make_source(pg_conn, schema, [f"thread {t} review {i} text" for i in range(400)], table=f"src{t}")
               for t in range(2)]
    engine = make_engine(sim, cost=True, max_concurrency=64, max_tokens=16)
    cap = 400 * cost_of_one(engine, "thread 0 review 399 text")  # half of what the 800 keys cost
    sim.reset()
    try:
        reports = in_threads(lambda source: fill_column(
            connect, engine, source, spec(), audit_schema=audit, run=RunContext("one-run", source), max_cost_usd=cap,
            window=64), [(s,) for s in sources])
    finally:
        engine.close()
    assert all(r.budget_skipped > 0 and r.requests_done > 0 for r in reports)
    assert sim.stats()["cost_usd"] <= cap
    assert q(pg_conn, f'select cost_usd::float from "{audit}".llm_runs') == [(pytest.approx(sim.stats()["cost_usd"]),)]


def test_two_concurrent_fills_pay_once_per_key(db, pg_conn, simulator_factory, in_threads):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(latency_ms=5, jitter_ms=5))
    prompts = [f"concurrent prompt {i}" for i in range(300)]
    source = make_source(pg_conn, schema, prompts + prompts[:50])
    engines = [make_engine(sim), make_engine(sim)]  # separate engines: no shared in-process cache
    try:
        reports = in_threads(lambda engine, n: fill_column(
            connect, engine, source, spec(), audit_schema=audit, run=RunContext(f"run-{n}", "n"), window=16,
            wait_timeout_s=60), [(e, i) for i, e in enumerate(engines)])
    finally:
        for e in engines:
            e.close()
    stats = sim.stats()
    assert stats["requests"] == 300
    assert set(stats["by_prompt_sha256"].values()) == {1}
    assert sum(r.requests_done for r in reports) == 300
    assert all(r.requests_done + r.cache_hits == 300 and r.errors == 0 for r in reports)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results') == [(300,)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]


def test_claims_of_dead_runs_are_taken_over_and_live_ones_waited_for(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["dead claim", "live claim", "free"])
    s = spec()
    engine = make_engine(sim)
    fp = s.fingerprint(engine.registry.get("sim").config)
    # migrate, then plant claims: one by a session that no longer exists, one by a live session
    fill_column(connect, engine, f'(select body from {source} where false)', s, audit_schema=audit,
                run=RunContext("setup"))
    other = connect()
    other.autocommit = True
    try:
        with other.cursor() as cur:
            cur.execute(f'insert into "{audit}".llm_claims (key, run_id, claim_token, backend_pid) values '
                        "(%s, 'dead-run', 'x', 0), (%s, 'live-run', 'y', pg_backend_pid())",
                        (cache_key(fp, "dead claim"), cache_key(fp, "live claim")))

        def other_run_answers():  # the live run answers its key a bit later, then releases its claim
            time.sleep(1.0)
            with other.cursor() as cur:
                cur.execute(f'insert into "{audit}".llm_results (key, model, output_text, cost_usd) '
                            "values (%s, 'sim', 'answered by the other run', 0.25)", (cache_key(fp, "live claim"),))
                cur.execute(f'delete from "{audit}".llm_claims where claim_token = %s', ("y",))

        t = threading.Thread(target=other_run_answers)
        t.start()
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("me", "n"),
                          wait_timeout_s=30)
        t.join()
    finally:
        other.close()
        engine.close()
    assert rep.requests_done == 2 and rep.cache_hits == 1 and rep.saved_cost_usd == pytest.approx(0.25)
    assert set(sim.stats()["by_prompt_sha256"]) == {sha("dead claim"), sha("free")}
    rows = dict(q(pg_conn, f"select body, a from ({join_sql(source, [('a', s, fp)], audit)}) j"))
    assert rows["live claim"] == "answered by the other run"
    assert q(pg_conn, f"select count(*) from \"{audit}\".llm_calls where run_id = 'me' and cached") == [(1,)]


def test_expired_and_invalid_rows_are_requested_again(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["a", "b", "c"])
    s = spec()
    engine = make_engine(sim, cache=False)
    try:
        fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r1"), cache_ttl_days=1)
        assert q(pg_conn, f'select count(*) from "{audit}".llm_results where expires_at > now() + interval \'23 hours\'') == [(3,)]
        with pg_conn.cursor() as cur:
            cur.execute(f"update \"{audit}\".llm_results set expires_at = now() - interval '1 second' "
                        f"where key = (select min(key) from \"{audit}\".llm_results)")
            cur.execute(f"update \"{audit}\".llm_results set valid = false "
                        f"where key = (select max(key) from \"{audit}\".llm_results)")
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r2"))
    finally:
        engine.close()
    assert (rep.cache_hits, rep.requests_done) == (1, 2)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results where valid and expires_at is null') == [(2,)]


def test_a_failed_write_loses_nothing_paid(db, pg_conn, simulator_factory, tmp_path):
    from dbt_pg_llm import DiskJournal, PgLlmError

    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    source = make_source(pg_conn, schema, [f"journaled prompt {i}" for i in range(20)])
    journal = ResultCache(DiskJournal(str(tmp_path / "journal")))
    engine = make_engine(sim, cost=True)
    engine.cache = journal
    s = spec()
    try:
        fill_column(connect, engine, f"(select body from {source} where false)", s, audit_schema=audit,
                    run=RunContext("setup"))  # creates the audit schema
        with pg_conn.cursor() as cur:  # the database refuses every answer (a real error, not a mock)
            cur.execute(f"""create function "{audit}".refuse() returns trigger language plpgsql as
                            $$ begin raise exception 'disk full (simulated)'; end $$;
                            create trigger refuse before insert or update on "{audit}".llm_results
                            for each row execute function "{audit}".refuse()""")
        with pytest.raises(PgLlmError) as info:
            fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r1", "n"), chunk_rows=5)
        assert "disk full" in str(info.value) and "journal" in str(info.value)
        paid = sim.stats()
        assert paid["requests"] >= 5
        assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]
        with pg_conn.cursor() as cur:
            cur.execute(f'drop trigger refuse on "{audit}".llm_results')
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r2", "n"))
    finally:
        engine.close()
    after = sim.stats()
    assert after["requests"] == 20  # what r1 paid for was replayed from the journal, not bought again
    assert rep.cache_hits == paid["requests"] and rep.requests_done == 0  # journal hits are not requests
    new = after["requests"] - paid["requests"]  # "N requested" excludes the journal hits
    assert rep.requests_sent == new and f" {new} requested" in rep.summary()
    assert q(pg_conn, f'select requests from "{audit}".llm_runs where run_id = %s', ("r2",)) == [(new,)]
    assert q(pg_conn, f'select count(*), sum(cost_usd)::float from "{audit}".llm_results')[0] == (
        20, pytest.approx(after["cost_usd"], rel=1e-12))


# -- durability under real faults -------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A real 4 MB tmpfs, mounted for the test (we run as root), for a journal to fill up."""
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_up(directory) -> None:
    """Write a filler file until the file system says ENOSPC (a real full disk, not a mock)."""
    import errno

    try:
        with open(directory / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def _ledger_line(label, ledger, stored) -> str:
    paid_twice = sum(1 for n in ledger["by_prompt_sha256"].values() if n > 1)
    return (f"\n[ledger] {label}: simulator requests={ledger['requests']} distinct prompts paid="
            f"{len(ledger['by_prompt_sha256'])} paid twice={paid_twice} llm_results={stored}")


def test_a_full_journal_disk_mid_run_is_reported_once_and_loses_nothing(db, pg_conn, sim, full_disk, caplog):
    from dbt_pg_llm import DiskJournal

    connect, schema, audit = db
    prompts = [f"journal full prompt {i} " + "x" * 200 for i in range(150)]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(sim)
    engine.cache = ResultCache(DiskJournal(str(full_disk / "journal")))
    _fill_up(full_disk)
    try:
        with caplog.at_level("DEBUG", logger="dbt_pg_llm"):
            rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r1", "n"),
                              window=8)
    finally:
        engine.close()
    ledger = sim.stats()
    stored = q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0]
    print(_ledger_line("journal disk full mid-run", ledger, stored))
    assert rep.journal_error and "llm.journal_dir" in rep.journal_error and "disk is full" in rep.journal_error
    # one clear message, not one traceback per answer
    journal_records = [r for r in caplog.records if r.name.startswith("dbt_pg_llm") and "journal" in r.getMessage()]
    assert len(journal_records) <= 2 and not any(r.exc_info for r in journal_records), \
        [r.getMessage()[:120] for r in caplog.records][:5]
    assert stored == ledger["requests"] == len(prompts)  # every paid answer is in llm_results: 0 lost
    assert max(ledger["by_prompt_sha256"].values()) == 1  # 0 paid twice


def test_when_neither_journal_nor_database_can_keep_answers_the_fill_stops_at_once(db, pg_conn, sim, full_disk):
    from dbt_pg_llm import DiskJournal, PgLlmError

    connect, schema, audit = db
    source = make_source(pg_conn, schema, [f"nowhere to keep {i}" for i in range(300)])
    engine = make_engine(sim)
    engine.cache = ResultCache(DiskJournal(str(full_disk / "journal")))
    try:
        fill_column(connect, engine, f"(select body from {source} where false)", spec(), audit_schema=audit,
                    run=RunContext("setup"))  # creates the audit schema
        with pg_conn.cursor() as cur:  # the database refuses every answer too (a real error)
            cur.execute(f"""create function "{audit}".refuse() returns trigger language plpgsql as
                            $$ begin raise exception 'could not extend file: No space left on device'; end $$;
                            create trigger refuse before insert or update on "{audit}".llm_results
                            for each row execute function "{audit}".refuse()""")
        _fill_up(full_disk)
        with pytest.raises(PgLlmError) as info:
            fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r1", "n"), window=4)
    finally:
        engine.close()
    text = str(info.value)
    ledger = sim.stats()
    print(_ledger_line("journal full and database refusing", ledger, 0))
    assert "llm.journal_dir" in text and "disk is full" in text and "kept nowhere" in text, text
    assert "they are kept in the engine's journal" not in text
    assert ledger["requests"] <= 4 + 1  # stopped at once: the first answer, plus what was in flight
    # the paid requests are in llm_calls and the run says failed, although the answers had nowhere to go
    assert q(pg_conn, f'select count(*) from "{audit}".llm_calls where run_id = %s', ("r1",)) == [(ledger["requests"],)]
    assert q(pg_conn, f'select status from "{audit}".llm_runs where run_id = %s', ("r1",)) == [("failed",)]


# -- counters match the simulator's ledger ----------------------------------------------------------

def test_calls_refused_by_an_open_circuit_are_not_counted_as_requests(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, [f"down {i} [[fault:500]]" for i in range(40)])
    engine = make_engine(sim, max_concurrency=1)
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "n"), window=1,
                          max_error_rate=1.0)
    finally:
        engine.close()
    ledger = sim.stats()
    assert ledger["requests"] < 40  # the breaker opened: most keys were never sent
    assert rep.errors == 40 and rep.requests_sent == ledger["requests"]
    assert f"{ledger['requests']} requested" in rep.summary()
    assert q(pg_conn, f'select requests, status from "{audit}".llm_runs') == [(ledger["requests"], "partial")]
    assert q(pg_conn, f'select sum(attempts)::int from "{audit}".llm_errors') == [(ledger["requests"],)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_calls where not cached') == [(ledger["requests"],)]


def test_rejected_answers_are_paid_requests_in_llm_calls(db, pg_conn, sim):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["fine one", "fine two", "withheld [[fault:content_filter]]"])
    engine = make_engine(sim, max_retries=1)
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "n"))
    finally:
        engine.close()
    ledger = sim.stats()
    assert rep.errors == 1 and rep.requests_sent == ledger["requests"]
    calls = q(pg_conn, f'select count(*), count(*) filter (where error_kind is not null) from "{audit}".llm_calls')
    assert calls == [(ledger["requests"], ledger["requests"] - 2)]
    assert q(pg_conn, f'select error_kind, attempts from "{audit}".llm_errors') == [
        ("invalid_output", ledger["requests"] - 2)]


def test_the_fill_keeps_the_models_concurrency_in_flight_beyond_256(db, pg_conn, simulator_factory):
    """The default window follows the model's max_concurrency: a fixed window of 256 capped a model
    allowed 400 concurrent requests at 256 (and less while answers were being written)."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(latency_ms=400))
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".wide as select g as id, \'wide prompt \' || g as body '
                    'from generate_series(1, 800) g')
    engine = make_engine(sim, max_concurrency=400)
    try:
        rep = fill_column(connect, engine, f'"{schema}".wide', spec(), audit_schema=audit, run=RunContext("r", "n"))
    finally:
        engine.close()
    assert rep.errors == 0 and sim.stats()["requests"] == 800
    assert sim.stats()["max_in_flight"] > 256


def test_a_packed_fill_keeps_the_models_concurrency_in_flight(db, pg_conn, simulator_factory):
    """The window counts rows: with 16 rows per packed request, the default window of 4 x 64 rows
    kept only 16 packed requests in flight for a model allowed 64."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(latency_ms=300))
    source = make_source(pg_conn, schema, [f"packed review {i} was fine" for i in range(64 * 16)])
    s = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": ["positive", "negative"],
                              "batch_size": 16}, default_model="sim")
    engine = make_engine(sim, max_concurrency=64)
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("r", "n"))
    finally:
        engine.close()
    assert rep.errors == 0 and sim.stats()["requests"] == 64
    assert sim.stats()["max_in_flight"] > 32


def test_packed_fill_dead_letters_a_failing_row_journals_the_rest_and_reruns_nothing(db, pg_conn, sim):
    """batch_size 16: a row the server refuses fails its packed request, the fallback single calls
    answer its 15 neighbours and dead-letter it alone; every answer is in the journal; cost adds up."""
    connect, schema, audit = db
    prompts = [f"review {i} was {'good' if i % 2 else 'bad'}" for i in range(31)] + ["review 31 [[fault:400]]"]
    source = make_source(pg_conn, schema, prompts)
    s = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": ["positive", "negative"],
                              "batch_size": 16}, default_model="sim")
    sim.configure(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT)
    engine = make_engine(sim, cost=True)
    try:
        rep = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("run-p", "model.p.packed"))
        stats = sim.stats()
        assert stats["requests"] == 2 + 16  # two packed requests, then single calls for the failed one's group
        assert (rep.errors, rep.requests_sent) == (1, 18)
        errors = q(pg_conn, f'select key, error_kind from "{audit}".llm_errors')
        assert errors == [(cache_key(s.fingerprint(engine.registry.get("sim").config), prompts[-1]), "invalid_input")]
        keys = [k for k, in q(pg_conn, f'select key from "{audit}".llm_results')]
        assert len(keys) == 31 and all(engine.cache.get(k) is not None for k in keys)  # journaled too
        labels = dict(q(pg_conn, f'select prompt, output_text from "{audit}".llm_results'))
        calls = q(pg_conn, f'select coalesce(sum(cost_usd), 0) from "{audit}".llm_calls where not cached')[0][0]
        assert float(calls) == pytest.approx(stats["cost_usd"], abs=1e-9)
        sim.reset()
        again = fill_column(connect, engine, source, s, audit_schema=audit, run=RunContext("run-q", "model.p.packed"))
        assert sim.stats()["requests"] == 1 and again.cache_hits == 31  # only the dead letter is asked again
        unpacked = {p: engine.call("sim", s.model_input(p), use_cache=False).text for p in prompts[:31]}
        assert labels == unpacked  # the labels one request per row gives
    finally:
        sim.configure(cost_per_1k_input=0.0, cost_per_1k_output=0.0)
        engine.close()
