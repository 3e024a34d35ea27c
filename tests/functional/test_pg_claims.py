"""Claims between concurrent fills: a waiting run says who it waits for, and a claimer that stops
making progress (a frozen process, a held idle connection) loses its claims after claim_timeout_s,
while a live claimer keeps them however slow its requests are (real Postgres, simulator, processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from test_pg_enrich import make_engine, make_source, q, sha, spec

from dbt_pg_llm.models.keys import cache_key
from dbt_pg_llm.pg import RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

PROMPTS = [f"claimed prompt {i}" for i in range(6)]

CLAIMER = textwrap.dedent("""
    import json, sys
    import psycopg2
    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

    args = json.loads(sys.argv[1])
    engine = Engine([Model("sim", {"api_url": args["api_url"], "model_version": "sim-small",
                                   "api_key": "sk-test-0123456789", "retry": {"max_retries": 0},
                                   "timeout_ms": 600000})], sinks=[BufferedSink()])
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
    fill_column(lambda: psycopg2.connect(**args["pg"]), engine, args["source"], spec,
                audit_schema=args["audit"], run=RunContext("frozen-run", "model.p.frozen"),
                claim_timeout_s=args["timeout"])
""")


@pytest.fixture
def sim(simulator):
    simulator.reset()
    return simulator


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def claims_of(pg_conn, audit, run_id) -> int:
    return q(pg_conn, f'select count(*) from "{audit}".llm_claims where run_id = %s', (run_id,))[0][0]


def timed_fill(connect, engine, source, audit, run_id: str, claim_timeout_s: float, progress: list):
    """A fill that waits for other runs' claims: (its report, how long it took)."""
    started = time.monotonic()
    rep = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext(run_id, "n"),
                      claim_timeout_s=claim_timeout_s, wait_timeout_s=60, progress=progress.append)
    return rep, time.monotonic() - started


def migrate_audit(connect, sim, source, audit):
    engine = make_engine(sim)
    try:
        fill_column(connect, engine, f"(select body from {source} where false)", spec(), audit_schema=audit,
                    run=RunContext("setup"))
    finally:
        engine.close()


def test_a_frozen_claimer_loses_its_claims_after_claim_timeout_s(db, pg, pg_conn, sim, simulator_factory, tmp_path):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, PROMPTS)
    slow = simulator_factory(SimulatorConfig(latency_ms=120_000))  # the claimer's requests never come back
    migrate_audit(connect, sim, source, audit)
    script = tmp_path / "claimer.py"
    script.write_text(CLAIMER)
    args = {"api_url": slow.base_url, "pg": pg.connect_kwargs(), "source": source, "audit": audit, "timeout": 2}
    claimer = subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    engine = make_engine(sim)
    progress: list[dict] = []
    try:
        wait_for(lambda: claims_of(pg_conn, audit, "frozen-run") == len(PROMPTS) or claimer.poll() is not None,
                 60, "the claimer's claims")
        assert claimer.poll() is None, claimer.communicate()[0]
        os.kill(claimer.pid, signal.SIGSTOP)  # frozen: its session stays open, its heartbeat stops
        rep, elapsed = timed_fill(connect, engine, source, audit, "taker", 2, progress)
    finally:
        engine.close()
        claimer.kill()  # SIGKILL ends a stopped process too
        claimer.wait(30)
    assert rep.requests_done == len(PROMPTS) and rep.errors == 0
    assert elapsed < 10, f"took {elapsed:.1f}s to take over a frozen claimer's keys"
    print(f"\na frozen claimer's {len(PROMPTS)} keys taken over and answered in {elapsed:.1f}s (claim_timeout_s=2)")
    assert sorted(sim.stats()["by_prompt_sha256"]) == sorted(sha(p) for p in PROMPTS)
    waits = [w for p in progress for w in p["waiting_on"]]
    assert waits, progress
    assert {(w["run_id"], w["node_id"], w["pid"], w["keys"]) for w in waits} == {
        ("frozen-run", "model.p.frozen", claimer.pid, len(PROMPTS))}


def test_a_claim_held_by_an_idle_connection_expires_and_the_wait_says_who(db, pg, pg_conn, sim):
    import psycopg2

    connect, schema, audit = db
    source = make_source(pg_conn, schema, PROMPTS)
    migrate_audit(connect, sim, source, audit)
    engine = make_engine(sim)
    fp = spec().fingerprint(engine.registry.get("sim").config)
    holder = psycopg2.connect(**pg.connect_kwargs(), application_name="stuck-etl")
    holder.autocommit = True
    progress: list[dict] = []
    try:
        with holder.cursor() as cur:  # claims, then the connection just sits there, open and idle
            cur.execute(f'insert into "{audit}".llm_claims (key, run_id, claim_token, backend_pid, node_id) '
                        "select k, 'idle-run', 'idle', pg_backend_pid(), 'model.p.idle' from unnest(%s::text[]) k",
                        ([cache_key(fp, p) for p in PROMPTS[:4]],))
        rep, elapsed = timed_fill(connect, engine, source, audit, "me", 1.5, progress)
    finally:
        engine.close()
        holder.close()
    assert rep.requests_done == len(PROMPTS) and rep.errors == 0 and 1.0 < elapsed < 8
    assert sim.stats()["requests"] == len(PROMPTS)
    waiting = [p for p in progress if p["waiting_on"]]
    assert waiting, progress
    first = waiting[0]
    assert first["waiting_keys"] == 4
    (who,) = first["waiting_on"]
    assert (who["run_id"], who["node_id"], who["application_name"], who["keys"]) == \
        ("idle-run", "model.p.idle", "stuck-etl", 4)
    assert who["since"].endswith("+00:00") and who["since_s"] >= 0
    assert progress[-1]["waiting_keys"] == 0 and progress[-1]["waiting_on"] == []
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims') == [(0,)]


def test_a_live_claimer_keeps_its_claims_however_slow_its_requests(db, pg_conn, sim, simulator_factory):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, PROMPTS)
    slow = simulator_factory(SimulatorConfig(latency_ms=4000))  # each request outlasts claim_timeout_s
    migrate_audit(connect, sim, source, audit)
    first_engine, second_engine = make_engine(slow, timeout_ms=60000), make_engine(sim)
    reports: dict = {}

    def first_run():
        reports["first"] = fill_column(connect, first_engine, source, spec(), audit_schema=audit,
                                       run=RunContext("slow-run", "n"), claim_timeout_s=1.5)

    worker = threading.Thread(target=first_run)
    try:
        worker.start()
        wait_for(lambda: claims_of(pg_conn, audit, "slow-run") == len(PROMPTS), 30, "the slow run's claims")
        reports["second"] = fill_column(connect, second_engine, source, spec(), audit_schema=audit,
                                        run=RunContext("patient-run", "n"), claim_timeout_s=1.5, wait_timeout_s=60)
        worker.join(60)
    finally:
        first_engine.close()
        second_engine.close()
    assert reports["first"].requests_done == len(PROMPTS)
    assert reports["second"].requests_done == 0 and reports["second"].cache_hits == len(PROMPTS)
    assert sim.stats()["requests"] == 0  # nothing paid twice
    assert slow.stats()["requests"] == len(PROMPTS)


def test_concurrent_claims_of_overlapping_keys_in_any_order_never_deadlock(db):
    """Two runs claiming the same keys at once, listed in opposite orders: each INSERT ... ON CONFLICT
    waits on the other's uncommitted rows, so unless both insert in one order Postgres aborts one
    with 'deadlock detected' (seen in test_dbt_adapter's two concurrent dbt runs)."""
    from dbt_pg_llm.pg.claims import Claims
    from dbt_pg_llm.pg.migrations import ensure_migrated

    connect, _, audit = db
    admin = connect()
    admin.autocommit = True
    ensure_migrated(admin, audit)
    claimers = []
    for name in ("a", "b"):
        conn = connect()
        conn.autocommit = True
        claimers.append((conn, Claims(conn, lambda: None, audit, RunContext(f"run-{name}", f"model.p.{name}"),
                                      "m", "complete", None, 120.0, f"token-{name}")))
    errors, won = [], []

    def claim(conn, holder, keys, barrier):
        barrier.wait()
        try:
            with conn.cursor() as cur:
                won.append(len(holder.insert(cur, keys)))
        except Exception as exc:  # a deadlock aborts one side's statement
            errors.append(exc)

    for round_ in range(15):
        keys = [sha(f"round {round_} key {i}") for i in range(3000)]
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=claim, args=(*claimers[0], keys, barrier)),
                   threading.Thread(target=claim, args=(*claimers[1], keys[::-1], barrier))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with admin.cursor() as cur:
            cur.execute(f'select count(*) from "{audit}".llm_claims')
            assert cur.fetchone()[0] == len(keys)  # every key claimed exactly once
            cur.execute(f'delete from "{audit}".llm_claims')
    for conn, _ in claimers:
        conn.close()
    admin.close()
    assert errors == []
    assert sum(won) == 15 * 3000
