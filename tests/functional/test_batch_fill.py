"""Provider batch APIs (issue 11) through fill_column_batched: real Postgres, real HTTP to the simulator.

Each test is a sequence of "runs" (run ids) over one small source table: submit in one run,
collect in the next; the simulator's batch ledger proves every key was paid once.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from dbt_pg_llm import BufferedSink, Engine, MemoryBackend, Model, ResultCache, estimate_cost
from dbt_pg_llm.models.batch_policy import BatchPolicy
from dbt_pg_llm.pg import ColumnSpec, RunContext
from dbt_pg_llm.pg.batch_fill import fill_column_batched
from dbt_pg_llm.pg.budget import run_spend_limit
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

COST_IN, COST_OUT = 0.5, 1.5
LABELS = ["positive", "negative", "neutral"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_settings(sim, provider="openai"):
    return {"provider": provider, "api_url": sim.base_url, "model_version": "sim-small", "api_key": "sk-batch-0123456789",
            "retry": {"max_retries": 0, "base_delay_ms": 1, "max_delay_ms": 10},
            "cost_per_1k_input_tokens": COST_IN, "cost_per_1k_output_tokens": COST_OUT,
            "batch": {"enabled": True, "min_keys": 5, "max_wait_s": 0, "poll_s": 0.05}}


def make_engine(sim, provider="openai") -> Engine:
    return Engine([Model("sim", model_settings(sim, provider))], cache=ResultCache(MemoryBackend()),
                  sinks=[BufferedSink()])


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def make_source(conn, schema, prompts):
    with conn.cursor() as cur:
        cur.execute(f'create table "{schema}".src (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".src (body) values (%s)', [(p,) for p in prompts])
    return f'"{schema}".src'


SPEC = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS}, default_model="sim")


def fill(db, engine, source, *, policy=None, spec=SPEC, run_id=None, **kw):
    connect, _, audit = db
    policy = policy if policy is not None else engine.model("sim").config.batch
    return fill_column_batched(connect, engine, source, spec, policy=policy, audit_schema=audit,
                               run=RunContext(run_id=run_id or uuid.uuid4().hex, node_id="model.t.m"), **kw)


def prompts(n, tag="p"):
    return [f"review {tag}{i}: it was fine" for i in range(n)]


@pytest.fixture
def bsim(simulator_factory):
    return simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))


def test_submit_in_one_run_collect_in_the_next_each_key_paid_once(db, pg_conn, bsim):
    bsim.configure(batch_delay_s=2.0)  # long enough for two runs under load
    engine = make_engine(bsim)
    texts = prompts(12)
    source = make_source(pg_conn, pg_conn.schema, texts + texts[:3])  # duplicates: one key each
    audit = db[2]

    first = fill(db, engine, source)
    created_before = time.monotonic()  # the batch was created before the first run returned
    assert len(first.submitted) == 1 and first.pending_keys == 12
    assert first.open_batches and "submitting" not in first.open_batches[0]
    assert first.report.rows == 15 and first.report.requests_done == 0
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] == 0
    assert q(pg_conn, f'select status, key_count, provider, open from "{audit}".llm_batches')[0][1:] == \
        (12, "openai", True)

    again = fill(db, engine, source)  # not ended yet: nothing resubmitted, nothing requested
    assert again.submitted == [] and again.pending_keys == 12
    time.sleep(max(0.0, 2.1 - (time.monotonic() - created_before)))
    second = fill(db, engine, source, run_id="collector-run")
    assert second.collected and second.pending_keys == 0 and second.open_batches == []
    stats = bsim.stats()
    assert stats["requests"] == 0 and stats["batches_created"] == 1
    assert sorted(stats["batch_by_prompt_sha256"]) == sorted(sha(t) for t in texts)
    assert set(stats["batch_by_prompt_sha256"].values()) == {1}
    labels = q(pg_conn, f'select output_text from "{audit}".llm_results')
    assert len(labels) == 12 and {r[0] for r in labels} <= set(LABELS)
    # cost at the batch price, logged like normal requests, counted in the run that submitted the
    # batch (it reserved the batch's worst case from its own cap; issue 17.1), not the collecting one
    (submitter,) = q(pg_conn, f'select run_id from "{audit}".llm_batches')[0]
    calls = q(pg_conn, f"""select count(*), sum(cost_usd), sum(prompt_tokens), sum(completion_tokens)
                           from "{audit}".llm_calls where not cached and run_id = %s""", (submitter,))[0]
    assert calls[0] == 12
    list_price = (calls[2] * COST_IN + calls[3] * COST_OUT) / 1000
    assert float(calls[1]) == pytest.approx(list_price * 0.5) == pytest.approx(stats["batch_cost_usd"])
    run = q(pg_conn, f'select requests, cost_usd from "{audit}".llm_runs where run_id = %s', (submitter,))[0]
    assert run[0] == 12 and float(run[1]) == pytest.approx(list_price * 0.5)
    assert q(pg_conn, f"select requests, cost_usd from \"{audit}\".llm_runs where run_id = 'collector-run'") == \
        [(0, 0)]
    batch = q(pg_conn, f'select status, open, answered, cost_usd, completed_at is not null from "{audit}".llm_batches')
    assert batch == [("completed", False, 12, batch[0][3], True)] and float(batch[0][3]) == pytest.approx(list_price * 0.5)

    third = fill(db, engine, source)
    assert third.submitted == [] and bsim.stats()["batches_created"] == 1 and bsim.stats()["requests"] == 0


def test_below_min_keys_uses_the_normal_path(db, pg_conn, bsim):
    engine = make_engine(bsim)
    source = make_source(pg_conn, pg_conn.schema, prompts(4))
    out = fill(db, engine, source)
    assert out.submitted == [] and bsim.stats()["requests"] == 4 and bsim.stats()["batches_created"] == 0
    # said, with the numbers (it used to fall back silently)
    assert len(out.problems) == 1 and "4 uncached key(s)" in out.problems[0] and "batch.min_keys (5)" in out.problems[0]
    assert fill(db, engine, source).problems == []  # all cached: nothing to say


def test_waits_up_to_max_wait_s_and_collects_in_the_same_run(db, pg_conn, bsim):
    bsim.configure(batch_delay_s=0.2)
    engine = make_engine(bsim, provider="anthropic")
    source = make_source(pg_conn, pg_conn.schema, prompts(6))
    lines = []
    out = fill(db, engine, source, policy=BatchPolicy(enabled=True, min_keys=5, max_wait_s=10, poll_s=0.05),
               say=lines.append)
    assert out.pending_keys == 0 and len(out.collected) == 1 and out.submitted[0].startswith("msgbatch_")
    assert lines and "1 of 1 batch(es) collected" in lines[-1]
    assert q(pg_conn, f'select count(*) from "{db[2]}".llm_results')[0][0] == 6
    assert bsim.stats()["requests"] == 0 and bsim.stats()["batch_requests"] == 6


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_batch_becomes_dead_letters_and_is_resubmitted(db, pg_conn, bsim, provider):
    bsim.configure(batch_expire_rate=1.0)
    engine = make_engine(bsim, provider)
    texts = prompts(6)
    source = make_source(pg_conn, pg_conn.schema, texts)
    audit = db[2]
    fill(db, engine, source)
    second = fill(db, engine, source)  # collects the expired batch, then resubmits the keys as a batch
    assert len(second.submitted) == 1 and second.pending_keys == 6
    errors = q(pg_conn, f'select error_kind, count(*) from "{audit}".llm_errors where resolved_at is null group by 1')
    assert errors == [("timeout", 6)]
    expired = q(pg_conn, f"select status from \"{audit}\".llm_batches where not open")
    assert expired == [("expired" if provider == "openai" else "ended",)]
    bsim.configure(batch_expire_rate=0.0)
    fill(db, engine, source)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] == 6
    assert q(pg_conn, f'select count(*) from "{audit}".llm_errors where resolved_at is null')[0][0] == 0
    stats = bsim.stats()
    assert stats["batches_created"] == 2 and set(stats["batch_by_prompt_sha256"].values()) == {1}
    assert stats["requests"] == 0


def test_partial_failure_dead_letters_and_retries_the_failed_keys_normally(db, pg_conn, bsim):
    bsim.configure(batch_error_rate=0.3)
    engine = make_engine(bsim)
    texts = prompts(20)
    source = make_source(pg_conn, pg_conn.schema, texts)
    audit = db[2]
    fill(db, engine, source)
    policy = BatchPolicy(enabled=True, min_keys=15, poll_s=0.05)  # the few failed keys: normal path
    second = fill(db, engine, source, policy=policy)
    failed = bsim.stats()["batch_errors"]
    assert 0 < failed < 15 and second.submitted == []
    stats = bsim.stats()
    assert stats["requests"] == failed and stats["batch_requests"] == 20 - failed
    assert set(stats["by_prompt_sha256"]).isdisjoint(stats["batch_by_prompt_sha256"])
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] == 20
    dead = q(pg_conn, f'select error_kind, resolved_at is not null from "{audit}".llm_errors')
    assert len(dead) == failed and all(kind == "api" and resolved for kind, resolved in dead)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_kill_between_submit_and_record_never_duplicates_the_batch(db, pg_conn, bsim, pg, tmp_path, provider):
    engine_settings = model_settings(bsim, provider)
    texts = prompts(8)
    source = make_source(pg_conn, pg_conn.schema, texts)
    audit = db[2]
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, psycopg2
        import dbt_pg_llm.pg.batch_store as store
        from dbt_pg_llm import Engine, MemoryBackend, Model, ResultCache
        from dbt_pg_llm.pg import ColumnSpec, RunContext
        from dbt_pg_llm.pg.batch_fill import fill_column_batched
        store.record_submitted = lambda *a, **k: os._exit(9)   # killed right after the provider accepted the batch
        engine = Engine([Model("sim", json.loads({json.dumps(json.dumps(engine_settings))}))], cache=ResultCache(MemoryBackend()))
        spec = ColumnSpec.from_dict({dict(kind="classify", prompt_sql="body", labels=LABELS)!r}, default_model="sim")
        kwargs = json.loads({json.dumps(json.dumps(pg.connect_kwargs()))})
        fill_column_batched(lambda: psycopg2.connect(**kwargs), engine, {source!r}, spec,
                            policy=engine.model("sim").config.batch, audit_schema={audit!r},
                            run=RunContext(run_id="killed", node_id="model.t.m"))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr[-3000:]
    assert bsim.stats()["batches_created"] == 1
    row = q(pg_conn, f'select status, provider_batch_id, submitter_pid from "{audit}".llm_batches')
    assert row[0][:2] == ("submitting", None)
    for _ in range(100):  # the killed client's backend goes away
        if not q(pg_conn, "select 1 from pg_stat_activity where pid = %s", (row[0][2],)):
            break
        time.sleep(0.05)
    rerun = fill(db, make_engine(bsim, provider), source)
    assert rerun.submitted == [] and rerun.collected and rerun.pending_keys == 0
    stats = bsim.stats()
    assert stats["batches_created"] == 1 and stats["requests"] == 0
    assert sorted(stats["batch_by_prompt_sha256"]) == sorted(sha(t) for t in texts)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] == 8


def test_unconfirmed_batch_that_never_reached_the_provider_is_abandoned_and_resubmitted(db, pg_conn, bsim):
    engine = make_engine(bsim)
    source = make_source(pg_conn, pg_conn.schema, prompts(6))
    audit = db[2]
    import dbt_pg_llm.pg.batch_store as store
    original = store.record_intent

    class Killed(BaseException):
        pass

    def intent_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed

    store.record_intent = intent_then_die
    try:
        with pytest.raises(Killed):
            fill(db, engine, source)
    finally:
        store.record_intent = original
    assert bsim.stats()["batches_created"] == 0
    out = fill(db, engine, source)
    assert len(out.submitted) == 1
    assert q(pg_conn, f'select status, open from "{audit}".llm_batches order by submitted_at') == \
        [("abandoned", False), ("validating", True)]


def test_two_concurrent_runs_never_submit_the_same_key(db, pg_conn, bsim, monkeypatch):
    from dbt_pg_llm.pg import batch_fill

    monkeypatch.setattr(batch_fill._Submitter, "CLAIM_BATCH", 7)  # interleave the two runs' claims
    texts = prompts(60)
    source = make_source(pg_conn, pg_conn.schema, texts)
    audit = db[2]
    results, errors = [], []
    barrier = threading.Barrier(2)

    def one():
        try:
            barrier.wait()
            results.append(fill(db, make_engine(bsim), source))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    total, distinct = q(pg_conn, f'select count(*), count(distinct key) from "{audit}".llm_batch_keys')[0]
    assert total == distinct == 60
    fill(db, make_engine(bsim), source)
    stats = bsim.stats()
    assert stats["requests"] == 0 and set(stats["batch_by_prompt_sha256"].values()) == {1}
    assert len(stats["batch_by_prompt_sha256"]) == 60


def test_a_normal_mode_fill_never_requests_keys_of_an_open_batch(db, pg_conn, bsim):
    bsim.configure(batch_delay_s=3600)
    engine = make_engine(bsim)
    texts = prompts(6)
    source = make_source(pg_conn, pg_conn.schema, texts)
    fill(db, engine, source)
    with pg_conn.cursor() as cur:
        cur.executemany(f'insert into "{pg_conn.schema}".src (body) values (%s)', [("one more",), (None,)])
    normal = fill_column_batched(db[0], engine, source, SPEC, policy=None, audit_schema=db[2],
                                 run=RunContext(run_id="normal-run", node_id="model.t.m"))
    stats = bsim.stats()
    assert stats["requests"] == 1 and stats["by_prompt_sha256"] == {sha("one more"): 1}
    assert normal.pending_keys == 6 and normal.report.rows == 8 and normal.report.distinct_keys == 7


def test_answers_are_journaled_before_they_are_applied_and_a_failed_apply_loses_nothing(db, pg_conn, bsim,
                                                                                         monkeypatch):
    from dbt_pg_llm.pg import batch_collect

    engine = make_engine(bsim)
    texts = prompts(6)
    source = make_source(pg_conn, pg_conn.schema, texts)
    audit = db[2]
    fill(db, engine, source)

    def database_down(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(batch_collect, "write_results", database_down)
    with pytest.raises(RuntimeError, match="went away"):
        fill(db, engine, source)
    keys = [k for (k,) in q(pg_conn, f'select key from "{audit}".llm_batch_keys')]
    assert all(engine.cache.get(k) is not None for k in keys)  # in the journal before the write failed
    assert q(pg_conn, f'select open from "{audit}".llm_batches') == [(True,)]
    monkeypatch.undo()
    fill(db, make_engine(bsim), source)  # a new engine (its journal empty): the provider's file again
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] == 6
    assert q(pg_conn, f'select count(*) from "{audit}".llm_calls where not cached')[0][0] == 6
    stats = bsim.stats()
    assert stats["batches_created"] == 1 and set(stats["batch_by_prompt_sha256"].values()) == {1}


def test_batch_mode_on_a_strategy_model_falls_back_to_the_normal_path_and_says_so(db, pg_conn, bsim):
    from dbt_pg_llm import LlmSettings, build_engine

    member = {k: v for k, v in model_settings(bsim).items() if k != "batch"}
    engine = build_engine(LlmSettings.from_dict({"default_model": "smart", "models": {
        "a": member, "b": member, "smart": {"strategy": "cascade", "models": ["a", "b"], "min_confidence": 0.0}}}),
        journal=False)
    source = make_source(pg_conn, pg_conn.schema, prompts(6))
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS, "mode": "batch"},
                                default_model="smart")
    out = fill(db, engine, source, spec=spec, policy=BatchPolicy(enabled=True, min_keys=1))
    assert out.submitted == [] and "needs a provider with a batch API" in out.problems[0]
    assert bsim.stats()["batches_created"] == 0 and bsim.stats()["requests"] == 6


def test_the_fill_closes_the_batch_http_clients_it_opened(db, pg_conn, bsim, monkeypatch):
    from dbt_pg_llm.models.batch_api.client import BatchClient

    closed = []
    original = BatchClient.close
    monkeypatch.setattr(BatchClient, "close", lambda self: (closed.append(self), original(self)))
    source = make_source(pg_conn, pg_conn.schema, prompts(6))
    fill(db, make_engine(bsim), source)
    assert len(closed) == 1 and closed[0]._http_client.is_closed


def test_a_batch_reserves_its_worst_case_from_the_run_cap_or_is_not_submitted(db, pg_conn, bsim):
    engine = make_engine(bsim)
    config = engine.model("sim").config
    texts = prompts(12, "cap")
    source = make_source(pg_conn, pg_conn.schema, texts)
    worst = sum(estimate_cost(config, SPEC.model_input(t).with_defaults(config.temperature, config.max_tokens))
                for t in texts) * config.batch.discount
    small = fill(db, engine, source, max_cost_usd=worst * 0.9)  # the batch does not fit: the normal path, capped
    ledger = bsim.stats()
    assert small.submitted == [] and ledger["batches_created"] == 0
    assert 0 < ledger["cost_usd"] <= worst * 0.9 and small.report.requests_done == 12  # refunds make room

    with pg_conn.cursor() as cur:  # new keys, and a fresh run with room for the batch: submitted, worst case held
        cur.execute(f'update "{pg_conn.schema}".src set body = body || \' again\'')
    run_id = uuid.uuid4().hex
    big = fill(db, engine, source, max_cost_usd=worst * 2, run_id=run_id)
    assert len(big.submitted) == 1 and bsim.stats()["batches_created"] == 1
    conn = db[0]()
    try:
        held = run_spend_limit(conn, db[2], run_id, worst * 2).spent_usd
    finally:
        conn.close()
    assert held >= worst * (big.pending_keys / len(texts)) - 1e-12


def test_keys_another_run_moves_from_its_claims_into_a_batch_are_not_taken_over_and_paid(db, pg_conn, bsim):
    """The race behind two concurrent runs: run B finds keys claimed by run A (not in a batch yet) and
    waits; A then records its batch and releases the claims. B must leave those keys to the batch,
    not take them over and pay for them with normal requests."""
    from dbt_pg_llm.models.keys import key_sql
    from dbt_pg_llm.pg.migrations import ensure_migrated

    engine = make_engine(bsim)
    texts = prompts(5, "race")
    source = make_source(pg_conn, pg_conn.schema, texts)
    connect, _, audit = db
    fingerprint = SPEC.fingerprint(engine.model("sim").config)
    holder = connect()  # run A: a live session holding the claims
    holder.autocommit = True
    ensure_migrated(holder, audit)
    with holder.cursor() as cur:
        cur.execute(f"select distinct {key_sql(fingerprint, 'body')} from {source}")
        keys = [row[0] for row in cur.fetchall()]
        cur.executemany(f"""insert into "{audit}".llm_claims (key, run_id, claimed_at, heartbeat_at, claim_token,
                                                              backend_pid)
                            values (%s, 'run-a', now(), now(), 'token-a', pg_backend_pid())""", [(k,) for k in keys])

    def a_records_its_batch_then_releases():
        time.sleep(1.0)
        with holder.cursor() as cur:
            cur.execute(f"""insert into "{audit}".llm_batches (batch_uid, provider, model, fingerprint, spec, status,
                                                               key_count)
                            values ('uid-a', 'openai', 'sim', %s, '{{}}'::jsonb, 'in_progress', %s)""",
                        (fingerprint, len(keys)))
            cur.executemany(f"""insert into "{audit}".llm_batch_keys (batch_uid, custom_id, key)
                                values ('uid-a', %s, %s)""", [(f"c{i}", k) for i, k in enumerate(keys)])
            cur.execute(f"""delete from "{audit}".llm_claims where claim_token = 'token-a'""")

    a = threading.Thread(target=a_records_its_batch_then_releases)
    a.start()
    try:
        b = fill_column_batched(connect, engine, source, SPEC, policy=None, audit_schema=audit,
                                run=RunContext(run_id="run-b", node_id="model.t.m"), claim_timeout_s=60)
    finally:
        a.join(10)
        holder.close()
    assert bsim.stats()["requests"] == 0  # B paid nothing: the keys are run A's batch's
    assert b.report.errors == 0
