"""One source of truth for the counters (issue 17.1): llm_runs == sum(llm_calls) == the simulator's
ledger, for concurrent runs, a cascade, and a run killed with kill -9 (its unlogged requests come
back from the call spool). Real Postgres, real HTTP to the simulator, a real killed process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional
COST_IN, COST_OUT = 0.5, 1.5


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def source(pg_conn, schema, prompts, table="reviews"):
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".{table} (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".{table} (body) values (%s)', [(p,) for p in prompts])
    return f'"{schema}".{table}'


def member(sim, version, **extra):
    return {"api_url": sim.base_url, "model_version": version, "retry": {"max_retries": 0},
            "cost_per_1k_input_tokens": COST_IN, "cost_per_1k_output_tokens": COST_OUT, **extra}


def run_rows(pg_conn, audit):
    return {r[0]: r[1:] for r in q(pg_conn, f'select run_id, requests, prompt_tokens, completion_tokens, '
                                            f'cost_usd::float8 from "{audit}".llm_runs')}


def call_sums(pg_conn, audit, run_id=None):
    where = "not cached" + (" and run_id = %s" if run_id else "")
    return q(pg_conn, f'select count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), '
                      f'coalesce(sum(cost_usd), 0)::float8 from "{audit}".llm_calls where {where}',
             (run_id,) if run_id else None)[0]


def ledger_of(*sims):
    stats = [s.stats() for s in sims]
    return (sum(s["requests"] for s in stats), sum(s["prompt_tokens"] for s in stats),
            sum(s["completion_tokens"] for s in stats), sum(s["cost_usd"] for s in stats))


def same(a, b):
    assert a[:3] == b[:3] and a[3] == pytest.approx(b[3], abs=1e-9), (a, b)


def test_four_concurrent_runs_add_up_to_the_ledger(db, pg_conn, simulator_factory, in_threads):
    """Four runs over overlapping keys, a flaky primary failing over to a backup: each key paid
    once; every run's llm_runs row equals its own llm_calls rows, their sum equals the two
    ledgers (the primary's failed requests included), and hits count once per key per run."""
    connect, schema, audit = db
    config = dict(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=20)
    primary = simulator_factory(SimulatorConfig(faults={"500": 0.3}, seed=7, **config))
    backup = simulator_factory(SimulatorConfig(**config))
    prompts = [f"review number {i % 150} is fine" for i in range(300)]
    src = source(pg_conn, schema, prompts)
    settings = LlmSettings.from_dict({"default_model": "sim", "models": {
        "sim": member(primary, "sim-small", fallbacks=["backup"]), "backup": member(backup, "sim-large")}})
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "max_tokens": 8}, "sim")
    # runs 0 and 1 in processes of their own (engines), runs 2 and 3 sharing one engine (dbt threads)
    shared = build_engine(settings, journal=False, sinks=[BufferedSink()])
    engines = [build_engine(settings, journal=False, sinks=[BufferedSink()]) for _ in range(2)] + [shared, shared]
    try:
        reports = in_threads(lambda i: fill_column(connect, engines[i], src, spec, audit_schema=audit,
                                                   run=RunContext(f"run-{i}", "model.p.m"), claim_timeout_s=5),
                             [(i,) for i in range(4)])
    finally:
        for e in engines[:3]:
            e.close()
    ledger = ledger_of(primary, backup)
    assert backup.stats()["requests"] > 0 and primary.stats()["answered"] + backup.stats()["requests"] == 150
    runs = run_rows(pg_conn, audit)
    for i in range(4):
        same(runs[f"run-{i}"], call_sums(pg_conn, audit, f"run-{i}"))
        rep = reports[i]
        assert (rep.requests_sent, rep.cost_usd) == (runs[f"run-{i}"][0], pytest.approx(runs[f"run-{i}"][3], abs=1e-9))
        assert rep.cache_hits + rep.requests_done == 150  # every key once: paid or a hit, never both or twice
    total = tuple(sum(r[i] for r in runs.values()) for i in range(4))
    print(f"\n[counters] 4 concurrent runs: ledger={ledger} llm_calls={call_sums(pg_conn, audit)} llm_runs={total}")
    same(total, ledger)
    same(call_sums(pg_conn, audit), ledger)
    hits = q(pg_conn, f'select sum(cache_hits) from "{audit}".llm_runs')[0][0]
    assert hits == 4 * 150 - 150


def test_cascade_counts_every_member_request_once(db, pg_conn, simulator_factory):
    """A cascade column and a plain column of its first member over the same prompts in one run:
    requests shared in flight are counted once, and every member's request is counted."""
    connect, schema, audit = db
    small, large = (simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT,
                                                      latency_ms=10)) for _ in range(2))
    prompts = ["I love it, great value", "terrible, it broke", "it arrived on a tuesday", "best purchase",
               "awful and flimsy", "the box was blue", "works great", "meh"] * 3
    src = source(pg_conn, schema, prompts)
    settings = LlmSettings.from_dict({"default_model": "smart", "models": {
        "small": member(small, "sim-small"), "large": member(large, "sim-large"),
        "smart": {"strategy": "cascade", "models": ["small", "large"], "min_confidence": 0.5}}})
    labels = ["positive", "negative", "neutral"]
    cascade = ColumnSpec.from_dict({"name": "c1", "kind": "classify", "prompt_sql": "body", "labels": labels}, "smart")
    plain = ColumnSpec.from_dict({"name": "c2", "kind": "classify", "prompt_sql": "body", "labels": labels,
                                  "model": "small"}, "smart")
    engine = build_engine(settings, journal=False, sinks=[BufferedSink()])
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(fill_column, connect, engine, src, s, audit_schema=audit,
                                   run=RunContext("run-c", f"model.p.{s.name}")) for s in (cascade, plain)]
            reports = [f.result() for f in futures]
    finally:
        engine.close()
    ledger = ledger_of(small, large)
    assert large.stats()["requests"] > 0  # some rows escalated
    runs = run_rows(pg_conn, audit)
    same(runs["run-c"], ledger)
    same(call_sums(pg_conn, audit, "run-c"), ledger)
    assert sum(r.requests_sent for r in reports) == ledger[0]
    print(f"\n[counters] cascade + shared member: ledger={ledger} llm_runs={runs['run-c']}")


KILLED_FILL = textwrap.dedent("""
    import sys, psycopg2
    from dbt_pg_llm import LlmSettings, build_engine
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
    dsn, url, journal, src, audit = sys.argv[1:6]
    settings = LlmSettings.from_dict({"default_model": "sim", "journal_dir": journal, "models": {"sim": {
        "api_url": url, "model_version": "sim-small", "retry": {"max_retries": 0}, "max_concurrency": 4,
        "cost_per_1k_input_tokens": 0.5, "cost_per_1k_output_tokens": 1.5}}})
    engine = build_engine(settings)
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "max_tokens": 8}, "sim")
    fill_column(lambda: psycopg2.connect(dsn), engine, src, spec, audit_schema=audit, run=RunContext("killed", "n"))
""")


def test_kill_9_run_is_settled_from_its_call_spool(db, pg, pg_conn, simulator_factory, tmp_path):
    """kill -9 in the middle of a fill: the requests whose answers it received but had not logged
    yet reach llm_calls from the call spool at the next run, and its llm_runs row is settled."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=30))
    src = source(pg_conn, schema, [f"kill me softly {i}" for i in range(2000)])
    journal = tmp_path / "journal"
    dsn = " ".join(f"{k}={v}" for k, v in pg.connect_kwargs().items())
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FILL, dsn, sim.base_url, str(journal), src, audit],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["requests"] < 60:  # well into it, between two flushes (every 2 s)
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)  # no new request goes out; the ones in flight finish
        deadline = time.monotonic() + 10
        while sim.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = ledger_of(sim)
    before = call_sums(pg_conn, audit, "killed")
    from dbt_pg_llm.models.journal import DiskJournal
    from dbt_pg_llm.pg.run_totals import replay_spools
    from dbt_pg_llm.pg.runs import mark_crashed_runs

    with DiskJournal(str(journal)) as j:  # the answers the killed process received (journaled first)
        entries = [j.get(k) for k in j.keys()]
    received = (len(entries), sum(e["prompt_tokens"] for e in entries), sum(e["completion_tokens"] for e in entries),
                sum(e["cost_usd"] for e in entries))
    conn = connect()
    try:
        conn.autocommit = True
        assert replay_spools(conn, audit, str(journal / "call_spool")) == {"killed"}
        mark_crashed_runs(conn, audit, dead_after_s=0)
    finally:
        conn.close()
    after = call_sums(pg_conn, audit, "killed")
    runs = run_rows(pg_conn, audit)
    print(f"\n[counters] kill -9: ledger={ledger} journal={received} llm_calls before={before} after={after} "
          f"llm_runs={runs['killed']}")
    assert before[0] < received[0]  # the last ~2 s of requests were not logged when it died
    assert after[0] >= received[0]  # every request whose answer it received is logged, once
    same(runs["killed"], after)
    # every request sent is a row: those whose answers it never read (at most max_concurrency, answered
    # and billed after SIGSTOP) are rows of error_kind 'lost', with the tokens nobody can know
    assert after[0] == ledger[0] and after[1] <= ledger[1]
    lost = q(pg_conn, f"select count(*) from \"{audit}\".llm_calls where run_id = 'killed' and error_kind = 'lost'")
    assert lost[0][0] <= 4
    assert not list((journal / "call_spool").glob("*.jsonl"))  # the segments are gone


def test_postgres_connections_terminated_mid_fill_still_add_up(db, pg, pg_conn, simulator_factory, tmp_path):
    """Every connection of a fill terminated (pg_terminate_backend) mid-way: the fill fails, and
    still llm_runs == llm_calls == the ledger (requests answered after the failure included)."""
    import psycopg2

    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=40))
    src = source(pg_conn, schema, [f"outage prompt {i}" for i in range(1500)])
    settings = LlmSettings.from_dict({"default_model": "sim", "journal_dir": str(tmp_path / "journal"),
                                      "models": {"sim": member(sim, "sim-small", max_concurrency=16)}})
    engine = build_engine(settings)
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "max_tokens": 8}, "sim")

    def fill_connect():
        return psycopg2.connect(**pg.connect_kwargs(), application_name="llm-outage-fill")

    errors = []

    def run():
        try:
            fill_column(fill_connect, engine, src, spec, audit_schema=audit, run=RunContext("outage", "n"))
        except Exception as exc:
            errors.append(exc)

    import threading

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["requests"] < 150:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        q(pg_conn, "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'llm-outage-fill'")
        thread.join(120)
    finally:
        engine.close()
    assert errors and "database connection broke" in str(errors[0]) or "could not write" in str(errors[0]), errors
    ledger = ledger_of(sim)
    calls = call_sums(pg_conn, audit, "outage")
    runs = run_rows(pg_conn, audit)
    print(f"\n[counters] connections terminated: ledger={ledger} llm_calls={calls} llm_runs={runs['outage']}")
    same(calls, ledger)
    same(runs["outage"], ledger)
    assert q(pg_conn, f"select status from \"{audit}\".llm_runs where run_id = 'outage'")[0][0] == "failed"


def test_vote_counts_every_member_request(db, pg_conn, simulator_factory):
    """A vote of three members (one of them flaky, failing over to nothing): every member's request
    is in llm_calls and llm_runs, exactly as the three ledgers say."""
    connect, schema, audit = db
    config = dict(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT, latency_ms=5)
    sims = [simulator_factory(SimulatorConfig(**config)) for _ in range(2)]
    sims.append(simulator_factory(SimulatorConfig(faults={"500": 0.2}, seed=3, **config)))
    prompts = [f"a product review, number {i}" for i in range(40)]
    src = source(pg_conn, schema, prompts)
    settings = LlmSettings.from_dict({"default_model": "panel", "models": {
        "a": member(sims[0], "sim-small"), "b": member(sims[1], "sim-large"), "c": member(sims[2], "sim-other"),
        "panel": {"strategy": "vote", "models": ["a", "b", "c"]}}})
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body",
                                 "labels": ["positive", "negative", "neutral"]}, "panel")
    engine = build_engine(settings, journal=False, sinks=[BufferedSink()])
    try:
        rep = fill_column(connect, engine, src, spec, audit_schema=audit, run=RunContext("run-v", "model.p.v"))
    finally:
        engine.close()
    ledger = ledger_of(*sims)
    assert sims[2].stats()["faults"]  # some of c's requests failed (and were billed nothing)
    runs = run_rows(pg_conn, audit)
    print(f"\n[counters] vote of 3: ledger={ledger} llm_calls={call_sums(pg_conn, audit, 'run-v')} "
          f"llm_runs={runs['run-v']}")
    same(call_sums(pg_conn, audit, "run-v"), ledger)
    same(runs["run-v"], ledger)
    assert rep.requests_sent == ledger[0]


def _batch_engine(sim):
    from dbt_pg_llm import Engine, MemoryBackend, Model, ResultCache

    return Engine([Model("sim", {"provider": "openai", "api_url": sim.base_url, "model_version": "sim-small",
                                 "api_key": "sk-batch-0123456789", "retry": {"max_retries": 0},
                                 "cost_per_1k_input_tokens": COST_IN, "cost_per_1k_output_tokens": COST_OUT,
                                 "batch": {"enabled": True, "min_keys": 5, "max_wait_s": 0, "poll_s": 0.05}})],
                  cache=ResultCache(MemoryBackend()), sinks=[BufferedSink()])


def _batched(db, engine, src, run_id, policy="model"):
    from dbt_pg_llm.pg.batch_fill import fill_column_batched

    connect, _, audit = db
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body",
                                 "labels": ["positive", "negative", "neutral"]}, default_model="sim")
    policy = engine.model("sim").config.batch if policy == "model" else policy  # None: no new batch
    return fill_column_batched(connect, engine, src, spec, policy=policy,
                               audit_schema=audit, run=RunContext(run_id=run_id, node_id="model.t.m"))


def batch_ledger(sim):
    """Requests: HTTP requests + billed batch lines; the simulator's token and cost totals already
    include the batch lines (at the batch price)."""
    s = sim.stats()
    return s["requests"] + s["batch_requests"], s["prompt_tokens"], s["completion_tokens"], s["cost_usd"]


def test_batch_collect_with_failed_lines_counts_billed_lines_once(db, pg_conn, simulator_factory):
    """Submit in one run; the next collects (30% of the lines errored: not billed), requests the
    failed keys normally, and then finds every key answered: llm_runs == llm_calls == ledger; the
    lines are the submitting run's spend, and no run counts a key as both paid and saved."""
    from dbt_pg_llm.models.batch_policy import BatchPolicy

    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    sim.configure(batch_error_rate=0.3, batch_delay_s=0.3)
    src = source(pg_conn, schema, [f"review b{i}: it was fine" for i in range(20)])
    engine = _batch_engine(sim)
    first = _batched(db, engine, src, "submitter")
    assert len(first.submitted) == 1
    time.sleep(0.5)
    second = _batched(db, engine, src, "collector", BatchPolicy(enabled=True, min_keys=15, poll_s=0.05))
    assert second.collected and 0 < sim.stats()["batch_errors"] < 15
    runs = run_rows(pg_conn, audit)
    ledger = batch_ledger(sim)
    total = tuple(sum(r[i] for r in runs.values()) for i in range(4))
    print(f"\n[counters] batch collect + failed lines retried: ledger={ledger} llm_calls={call_sums(pg_conn, audit)} "
          f"llm_runs={total}")
    same(call_sums(pg_conn, audit), ledger)
    same(total, ledger)
    # the batch lines are the submitter's spend (it reserved them from its cap); the collector paid
    # the failed keys itself and found the batch's keys answered: hits, never both paid and saved
    errored = sim.stats()["batch_errors"]
    assert q(pg_conn, f'select run_id, requests, cache_hits from "{audit}".llm_runs order by run_id') == \
        [("collector", errored, 20 - errored), ("submitter", 20 - errored, 0)]


def test_cancelled_batch_counts_only_what_was_billed(db, pg_conn, simulator_factory):
    """A batch cancelled before it ran: none of its lines is billed, so none is a request; the
    next run requests the keys normally and llm_runs == llm_calls == ledger."""
    from dbt_pg_llm.pg.batch_collect import BatchCollector

    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    sim.configure(batch_delay_s=30)
    src = source(pg_conn, schema, [f"review c{i}: it was fine" for i in range(12)])
    engine = _batch_engine(sim)
    assert len(_batched(db, engine, src, "submitter").submitted) == 1
    with BatchCollector(connect, engine, audit, RunContext("canceller")) as collector:
        assert collector.cancel()
    deadline = time.monotonic() + 30
    while q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0] < 12:  # once the batch has ended:
        assert time.monotonic() < deadline
        _batched(db, engine, src, "after-cancel", policy=None)  # collects it, requests the keys normally
        time.sleep(0.1)
    runs = run_rows(pg_conn, audit)
    ledger = batch_ledger(sim)
    total = tuple(sum(r[i] for r in runs.values()) for i in range(4))
    print(f"\n[counters] cancelled batch: ledger={ledger} llm_calls={call_sums(pg_conn, audit)} llm_runs={total}")
    same(call_sums(pg_conn, audit), ledger)
    same(total, ledger)


def test_progress_never_counts_past_its_total_when_the_journal_answers(db, pg_conn, simulator_factory, tmp_path):
    """Keys answered from the engine's journal (paid by an earlier fill into another audit schema):
    progress never says more done than there is to do, and the hits count once per key."""
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    src = source(pg_conn, schema, [f"journal prompt {i % 60}" for i in range(90)])
    settings = LlmSettings.from_dict({"default_model": "sim", "journal_dir": str(tmp_path / "journal"),
                                      "models": {"sim": member(sim, "sim-small")}})
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "max_tokens": 8}, "sim")
    engine = build_engine(settings)
    events = []
    try:
        fill_column(connect, engine, src, spec, audit_schema=audit, run=RunContext("first", "n"))
        other = audit + "_2"
        try:
            rep = fill_column(connect, engine, src, spec, audit_schema=other, run=RunContext("second", "n"),
                              progress=events.append)
            runs = q(pg_conn, f'select requests, cache_hits from "{other}".llm_runs')
        finally:
            with pg_conn.cursor() as cur:
                cur.execute(f'drop schema if exists "{other}" cascade')
    finally:
        engine.close()
    print(f"\n[counters] journal hits: progress {[(e['requests_done'], e['requests_total']) for e in events]}")
    assert all(e["requests_done"] <= e["requests_total"] for e in events), events
    assert sim.stats()["requests"] == 60 and runs == [(0, 60)] and (rep.requests_sent, rep.cache_hits) == (0, 60)


def test_report_settles_a_dead_run_from_its_spool(db, pg_conn, tmp_path):
    """pg_llm.report's settling step: a run that died with requests only in its spool (its process
    is gone) gets them into llm_calls and its llm_runs row settled and marked crashed."""
    from dbt_pg_llm.pg.migrations import migrate
    from dbt_pg_llm.pg.runs import run_started
    from dbt_pg_llm.pg.usage_report import settle_for_report

    connect, _, audit = db
    spool = tmp_path / "call_spool"
    code = textwrap.dedent("""
        import sys
        from dbt_pg_llm.models.logs import BufferedSink, ModelLog
        sink = BufferedSink(spool_dir=sys.argv[1])
        for i in range(3):
            sink.emit(ModelLog(model="m", input_hash=f"k{i}", prompt_tokens=10, completion_tokens=2,
                               cost_usd=0.0125, context={"run_id": "ghost", "node_id": "n", "column_name": "c"}))
        # a request that went out and whose answer never came back before the process ended
        sink.sending("sent-1", {"model": "m", "input_hash": "k3", "attempt": 1, "context": {"run_id": "ghost"}})
    """)
    subprocess.run([sys.executable, "-c", code, str(spool)], check=True)  # exits without writing them
    conn = connect()
    try:
        conn.autocommit = True
        migrate(conn, audit)
        run_started(conn, audit, "ghost")
        with conn.cursor() as cur:
            cur.execute(f"update \"{audit}\".llm_runs set heartbeat_at = now() - interval '1 day'")
        assert settle_for_report(conn, audit, str(spool)) == {"ghost"}
        assert settle_for_report(conn, audit, str(spool)) == set()  # replayed once
    finally:
        conn.close()
    assert q(pg_conn, f'select status, requests, prompt_tokens, completion_tokens, cost_usd::float8 '
                      f'from "{audit}".llm_runs') == [("crashed", 4, 30, 6, 0.0375)]
    assert q(pg_conn, f'select count(*), count(distinct call_id), count(*) filter (where error_kind = %s) '
                      f'from "{audit}".llm_calls', ("lost",)) == [(4, 4, 1)]


def test_a_collected_batch_is_the_submitters_spend_not_the_collectors(db, pg_conn, simulator_factory):
    """Run B (its own column, a small cap) collects run A's batch first: the batch's cost is A's
    (A reserved it from its cap at submit), so B's cap is B's own and B pays its keys."""
    from dbt_pg_llm.pg.batch_fill import fill_column_batched

    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=COST_IN, cost_per_1k_output=COST_OUT))
    sim.configure(batch_delay_s=0.3)
    src_a = source(pg_conn, schema, [f"review a{i}: it was fine" for i in range(30)], table="a")
    src_b = source(pg_conn, schema, [f"review b{i}: it was bad" for i in range(3)], table="b")
    engine = _batch_engine(sim)
    assert len(_batched(db, engine, src_a, "run-a").submitted) == 1
    time.sleep(0.5)
    spec_b = ColumnSpec.from_dict({"name": "tone", "kind": "complete", "prompt_sql": "body", "max_tokens": 8},
                                  default_model="sim")
    cap = 0.15
    b = fill_column_batched(connect, engine, src_b, spec_b, policy=None, audit_schema=audit,
                            run=RunContext("run-b", "model.t.b"), max_cost_usd=cap)
    runs = {r[0]: r[1:] for r in q(pg_conn, f'select run_id, requests, cost_usd::float8 from "{audit}".llm_runs')}
    print(f"\n[counters] batch of run A collected by run B (cap ${cap}): llm_runs={runs} ledger={batch_ledger(sim)}")
    assert b.collected and runs["run-a"][0] == 30 and runs["run-a"][1] > cap  # the batch: A's spend
    assert b.report.budget_skipped == 0 and runs["run-b"][0] == 3 and runs["run-b"][1] <= cap
    ledger = batch_ledger(sim)
    assert runs["run-a"][0] + runs["run-b"][0] == ledger[0]
    assert runs["run-a"][1] + runs["run-b"][1] == pytest.approx(ledger[3], abs=1e-9)


def test_a_key_found_answered_at_claim_time_is_one_hit(db, pg_conn):
    """A key answered by another run between listing and claiming is released and logged as a hit
    by the claim, and then also waited for: the wait's 'late hit' must not log it a second time."""
    import uuid as _uuid

    from dbt_pg_llm.pg.claims import Claims
    from dbt_pg_llm.pg.migrations import migrate
    from dbt_pg_llm.pg.report import FillReport
    from dbt_pg_llm.pg.writers import ResultRow, record_run, write_results

    connect, _, audit = db
    reader, writer = connect(), connect()
    reader.autocommit = writer.autocommit = True
    try:
        migrate(writer, audit)
        write_results(writer, audit, [ResultRow(key="k1", model="sim", output_text="x", cost_usd=0.25)])
        report = FillReport(model="sim")
        claims = Claims(reader, lambda: writer, audit, RunContext("run-h", "n"), "sim", "complete", report, 5.0,
                        _uuid.uuid4().hex, column_name="c")
        assert claims.claim(["k1"]) == []  # answered meanwhile: released, a hit
        claims.log_late_hits(["k1"], "c")  # the fill waited for it too (it was not "mine")
        record_run(writer, audit, "run-h")
    finally:
        reader.close()
        writer.close()
    assert report.cache_hits == 1 and report.saved_cost_usd == pytest.approx(0.25)
    assert q(pg_conn, f'select count(*), min(column_name) from "{audit}".llm_calls where cached') == [(1, "c")]
    assert q(pg_conn, f'select cache_hits, saved_cost_usd::float8 from "{audit}".llm_runs') == [(1, 0.25)]


def test_cost_alert_is_what_llm_calls_says_the_run_paid(db, pg_conn):
    """The cost alert compares the run's llm_calls spend per model with max_cost_usd: a batch's
    lines (never requested by this process, so absent from its metrics) count."""
    from dbt_pg_llm import Engine
    from dbt_pg_llm.models.alerts import AlertThresholds
    from dbt_pg_llm.models.logs import ModelLog
    from dbt_pg_llm.pg.migrations import migrate
    from dbt_pg_llm.pg.upkeep import raise_alerts
    from dbt_pg_llm.pg.writers import write_calls

    connect, _, audit = db
    conn = connect()
    try:
        conn.autocommit = True
        migrate(conn, audit)
        write_calls(conn, audit, [ModelLog(model="batchy", cost_usd=1.5, context={"run_id": "r"}),
                                  ModelLog(model="batchy", cost_usd=1.0, context={"run_id": "other"})])
        alerts = raise_alerts(conn, audit, Engine([]), "r", AlertThresholds(max_cost_usd=1.0))
    finally:
        conn.close()
    assert [(a.model, a.type) for a in alerts] == [("batchy", "cost")] and "$1.5000" in alerts[0].message
