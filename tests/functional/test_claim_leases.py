"""A run that stops being live without dying must not pay again for keys another run took over
(issue 16.1-2, decision 0022): run A (a real process) holds claims with requests queued behind
its max_concurrency; it is frozen with SIGSTOP past claim_timeout_s, or its claim session is
terminated with pg_terminate_backend, while run B waits for its keys. The simulator's ledger is
the truth of what was paid: keys paid twice are at most the requests A had in flight (its
max_concurrency), not the hundreds it had queued, and every key is answered."""
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

from dbt_pg_llm.pg import RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

KEYS = 300  # A claims a window of 256 of them at once and queues them all behind its pool
A_CONCURRENCY = 8  # at most this many of A's requests are in flight at any moment
TIMEOUT_S = 3.0  # claim_timeout_s of both runs
LATENCY_MS = 250

RUN_A = textwrap.dedent("""
    import json, logging, sys
    import psycopg2
    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    args = json.loads(sys.argv[1])
    engine = Engine([Model("sim", {"api_url": args["api_url"], "model_version": "sim-small",
                                   "api_key": "sk-test-0123456789", "retry": {"max_retries": 0},
                                   "timeout_ms": 600000, "max_concurrency": args["concurrency"]})],
                    sinks=[BufferedSink()])
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
    rep = fill_column(lambda: psycopg2.connect(**args["pg"]), engine, args["source"], spec,
                      audit_schema=args["audit"], run=RunContext("run-a", "model.p.a"),
                      claim_timeout_s=args["timeout"], wait_timeout_s=60)
    engine.close()
    print("REPORT", json.dumps({"requests_done": rep.requests_done, "errors": rep.errors,
                                "cache_hits": rep.cache_hits}), flush=True)
""")


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory(SimulatorConfig(latency_ms=LATENCY_MS))


def _prompts(tag: str) -> list[str]:
    return [f"lease {tag} prompt {i}" for i in range(KEYS)]


def _start_a(tmp_path, pg, sim, source, audit) -> subprocess.Popen:
    script = tmp_path / "run_a.py"
    script.write_text(RUN_A)
    args = {"api_url": sim.base_url, "pg": pg.connect_kwargs(), "source": source, "audit": audit,
            "timeout": TIMEOUT_S, "concurrency": A_CONCURRENCY}
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run A ended early: {proc.communicate()[0][-3000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _migrate(connect, sim, source, audit):
    engine = make_engine(sim)
    try:
        fill_column(connect, engine, f"(select body from {source} where false)", spec(), audit_schema=audit,
                    run=RunContext("setup"))
    finally:
        engine.close()


def _execute(conn, sql, params=None) -> None:
    with conn.cursor() as cur:
        cur.execute(sql, params)


def _ledger(sim, label: str) -> dict:
    by_prompt = sim.stats()["by_prompt_sha256"]
    figures = {"requests": sum(by_prompt.values()), "distinct_keys": len(by_prompt),
               "extra_payments": sum(n - 1 for n in by_prompt.values())}
    print(f"\n[ledger] {label}: " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def _run_b(connect, sim, source, audit, progress: list):
    engine = make_engine(sim, max_concurrency=32, timeout_ms=600000)
    try:
        return fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("run-b", "model.p.b"),
                           claim_timeout_s=TIMEOUT_S, wait_timeout_s=60, progress=progress.append)
    finally:
        engine.close()


def test_a_paused_run_does_not_pay_for_keys_another_run_took_over(db, pg, pg_conn, sim, tmp_path):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, _prompts("paused"))
    _migrate(connect, sim, source, audit)
    a = _start_a(tmp_path, pg, sim, source, audit)
    try:
        _wait_for(lambda: sim.stats()["requests"] >= 2 * A_CONCURRENCY, 60, "run A's first answers", a)
        os.kill(a.pid, signal.SIGSTOP)  # frozen with A_CONCURRENCY requests in flight, ~240 queued
        time.sleep(0.5)  # what A sent has reached the simulator; A writes nothing while stopped
        sent = sim.stats()["requests"]
        written = q(pg_conn, f'select count(*) from "{audit}".llm_results where run_id = %s', ("run-a",))[0][0]
        claimed_by_a = q(pg_conn, f'select count(*) from "{audit}".llm_claims where run_id = %s', ("run-a",))[0][0]
        rep_b = _run_b(connect, sim, source, audit, [])  # takes A's keys over after claim_timeout_s, pays them
        os.kill(a.pid, signal.SIGCONT)
        out, _ = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(30)
    # in flight at the pause: sent, and not in llm_results yet (on the wire, or answered and waiting
    # for the fill's next write): B cannot know A paid for those, every other key A held it must not pay
    in_flight = sent - written
    ledger = _ledger(sim, f"paused run A (claims held at the pause {claimed_by_a}, in flight {in_flight})")
    assert a.returncode == 0, out[-3000:]
    assert claimed_by_a - in_flight > 100  # queued behind A's pool: what a resumed run must not send
    assert rep_b.errors == 0
    answered = q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0]
    assert answered == KEYS and ledger["distinct_keys"] == KEYS
    assert ledger["extra_payments"] <= in_flight, out[-3000:]
    lines = [line for line in out.splitlines() if "were taken over by another run" in line]
    assert len(lines) == 1 and "run-b" in lines[0], out[-3000:]


def test_a_run_whose_claim_session_is_terminated_does_not_let_another_pay_twice(db, pg, pg_conn, sim, tmp_path):
    connect, schema, audit = db
    source = make_source(pg_conn, schema, _prompts("terminated"))
    _migrate(connect, sim, source, audit)
    a = _start_a(tmp_path, pg, sim, source, audit)
    progress: list[dict] = []
    result: dict = {}
    def run_b():
        try:
            result["rep"] = _run_b(connect, sim, source, audit, progress)
        except BaseException as exc:  # shown by the assertion below
            result["error"] = repr(exc)

    b = threading.Thread(target=run_b)
    try:
        _wait_for(lambda: sim.stats()["requests"] >= 2 * A_CONCURRENCY, 60, "run A's first answers", a)
        b.start()
        _wait_for(lambda: any(p.get("waiting_keys") for p in progress), 60, "run B waiting for A's keys", a)
        (pid,) = {r[0] for r in q(pg_conn, f'select backend_pid from "{audit}".llm_claims where run_id = %s',
                                  ("run-a",))}
        at_kill = sim.stats()["requests"]
        q(pg_conn, "select pg_terminate_backend(%s)", (pid,))
        out, _ = a.communicate(timeout=120)
        b.join(120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(30)
    ledger = _ledger(sim, f"run A's claim session terminated (requests before {at_kill})")
    assert not b.is_alive() and "error" not in result, (result, out[-3000:])
    assert result["rep"].errors == 0, result["rep"].first_error
    answered = q(pg_conn, f'select count(*) from "{audit}".llm_results')[0][0]
    assert answered == KEYS and ledger["distinct_keys"] == KEYS, out[-3000:]
    assert ledger["extra_payments"] <= A_CONCURRENCY, out[-3000:]


def test_a_lone_run_paused_past_its_lease_keeps_its_keys_and_pays_each_once(db, pg, pg_conn, sim, tmp_path):
    """Nobody took the keys over: after the pause the heartbeat renews the lease at once and every
    held request goes out (none dropped, none paid twice)."""
    connect, schema, audit = db
    source = make_source(pg_conn, schema, _prompts("lone"))
    _migrate(connect, sim, source, audit)
    a = _start_a(tmp_path, pg, sim, source, audit)
    try:
        _wait_for(lambda: sim.stats()["requests"] >= 2 * A_CONCURRENCY, 60, "run A's first answers", a)
        os.kill(a.pid, signal.SIGSTOP)
        time.sleep(TIMEOUT_S * 0.8)  # past its lease (TIMEOUT_S / 2), before anyone could take over
        os.kill(a.pid, signal.SIGCONT)
        out, _ = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(30)
    ledger = _ledger(sim, "lone run A paused past its lease")
    assert a.returncode == 0, out[-3000:]
    assert "taken over" not in out, out[-3000:]
    report = json.loads(out.split("REPORT ", 1)[1].splitlines()[0])
    assert (report["requests_done"], report["errors"]) == (KEYS, 0)
    assert ledger == {"requests": KEYS, "distinct_keys": KEYS, "extra_payments": 0}


def test_keys_released_while_a_heartbeat_runs_are_not_reported_taken_over(db, pg, sim):
    """A fill releases the claims of answered keys while a heartbeat runs (what happened when a
    paused run resumed: the fill wrote and released at once, the heartbeat beat at once): a beat
    right after the release's delete, and a beat whose snapshot of the keys held was taken before
    the release. Those keys are gone because they are done, not taken over: nothing is lost and no
    warning is given (real Postgres)."""
    import psycopg2
    import psycopg2.extensions

    from dbt_pg_llm.models.lease import SendLease
    from dbt_pg_llm.pg import FillReport
    from dbt_pg_llm.pg.claims import ClaimHeartbeat, Claims

    connect, schema, audit = db
    _migrate(connect, sim, "(select 'x'::text as body)", audit)
    between: list = []  # what runs right after the next statement matching its text

    class Hooked(psycopg2.extensions.cursor):
        def execute(self, sql, params=None):
            for i, (text, then) in enumerate(between):
                if text in sql:
                    del between[i]
                    if text.startswith("update"):
                        then()  # before the heartbeat's statement
                        return super().execute(sql, params)
                    result = super().execute(sql, params)
                    then()  # after the release's delete
                    return result
            return super().execute(sql, params)

    def hooked_connect():
        conn = psycopg2.connect(cursor_factory=Hooked, **pg.connect_kwargs())
        conn.autocommit = True
        return conn

    reader, writer = hooked_connect(), hooked_connect()
    lease = SendLease(60, hold_s=60)
    claims = Claims(reader, lambda: writer, audit, RunContext("run-r", "model.p.r"), "sim", "complete",
                    FillReport("sim"), claim_timeout_s=TIMEOUT_S, token="token-r", lease=lease)
    beat = ClaimHeartbeat(hooked_connect, f'"{audit}"', "token-r", every_s=60, lease=lease, lease_s=TIMEOUT_S / 2)
    keys = [f"k{i:02d}" for i in range(20)]
    try:
        assert claims.claim(keys) == keys
        between.append(("delete from", beat.beat))  # a beat between the delete and what follows it
        claims.release(keys[:5])
        between.append(("update", lambda: claims.release(keys[5:9])))  # a release within a beat
        held_after = beat.beat()
    finally:
        beat.stop()
        claims.release_all()
        reader.close()
        writer.close()
    assert not between and held_after == len(keys) - 9
    assert beat.lost == 0 and lease.admits_now(frozenset(keys[9:]))


def test_keys_whose_claim_was_lost_are_not_sent_singly_packed_or_by_a_cascade(simulator_factory):
    """Every way a map sends a key -- one request, a packed request, a cascade's members -- asks the
    lease first: keys another run took over are not sent (real HTTP to the simulator)."""
    from dbt_pg_llm import BufferedSink, LlmSettings, ModelInput, build_engine
    from dbt_pg_llm.errors import ErrorKind
    from dbt_pg_llm.models.lease import SendLease

    small, large = simulator_factory(), simulator_factory()
    member = {"retry": {"max_retries": 0}, "timeout_ms": 60000}
    settings = LlmSettings.from_dict({"default_model": "small", "models": {
        "small": {**member, "api_url": small.base_url, "model_version": "sim-small"},
        "large": {**member, "api_url": large.base_url, "model_version": "sim-large"},
        "smart": {"strategy": "cascade", "models": ["small", "large"], "min_confidence": 1.0}}})
    engine = build_engine(settings, journal=False, sinks=[BufferedSink()])
    keys = [f"k{i}" for i in range(8)]
    lease = SendLease(60, hold_s=5)
    lease.claimed(keys, lease.claiming())
    lease.renewed(time.monotonic(), set(keys), set(keys[:4]))  # k4..k7 were taken over
    try:
        for label, run in (
                ("single", lambda items: engine.map_unordered("small", items, lease=lease)),
                ("packed", lambda items: engine.map_packed("small", items, batch_size=4, lease=lease)),
                ("cascade", lambda items: engine.map_unordered("smart", items, lease=lease))):
            small.reset()
            large.reset()
            items = [(k, ModelInput(f"{label} prompt {k}")) for k in keys]
            outputs = dict(run(items))
            lost = {k for k, out in outputs.items() if out.error_kind is ErrorKind.CLAIM_LOST}
            assert lost == set(keys[4:]), label
            assert all(outputs[k].ok for k in keys[:4]), label
            assert all(out.attempts == 0 and out.cost_usd == 0 for k, out in outputs.items() if k in lost)
            sent = {**small.stats()["by_prompt_sha256"], **large.stats()["by_prompt_sha256"]}
            assert not {sha(inp.prompt) for k, inp in items if k in lost} & set(sent), label
            expected = {"single": 4, "packed": 1, "cascade": 4}[label]  # the packed group of k0..k3: one request
            assert small.stats()["requests"] == expected, (label, sent)
            assert large.stats()["requests"] <= (4 if label == "cascade" else 0), label  # escalations
    finally:
        engine.close()


def test_a_gone_session_is_not_taken_over_before_its_lease_ends_unless_its_process_is_dead(db, pg_conn):
    """The take-over rule, on real sessions: a claimer whose claim session was terminated keeps its
    keys until its lease ends (its heartbeat may still renew it); a claimer of this host whose
    process is dead loses them at once; and ``confirm`` (a batch submitter's check) returns only
    the keys still ours."""
    from dbt_pg_llm.pg.claims import Claims
    from dbt_pg_llm.pg.migrations import ensure_migrated

    connect, _, audit = db
    admin = connect()
    admin.autocommit = True
    ensure_migrated(admin, audit)

    def claimer(name):
        conn = connect()
        conn.autocommit = True
        return conn, Claims(conn, lambda: admin, audit, RunContext(f"run-{name}", f"model.p.{name}"), "m",
                            "complete", None, 120.0, f"token-{name}")

    (conn_a, a), (conn_b, b), (conn_c, c) = claimer("a"), claimer("b"), claimer("c")
    try:
        keys = [f"gone {i}" for i in range(4)]
        assert a.claim(keys) == keys
        with conn_a.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            a_pid = cur.fetchone()[0]
        q(pg_conn, "select pg_terminate_backend(%s)", (a_pid,))
        _wait_for(lambda: not q(pg_conn, "select 1 from pg_stat_activity where pid = %s", (a_pid,)), 10,
                  "the terminated session to go")
        assert b.take_over(keys) == []  # session gone, lease (60 s) running: A may still be sending
        _execute(pg_conn, f'update "{audit}".llm_claims set lease_until = now() - interval \'1 second\'')
        assert b.take_over(keys) == keys  # lease over and session gone
        assert b.confirm(keys) == keys

        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        dead_pid = int(dead.stdout)  # a process of this host that has exited
        with conn_b.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            b_pid = cur.fetchone()[0]
        _execute(pg_conn, f'update "{audit}".llm_claims set client_pid = %s, lease_until = now() + interval \'1 hour\'',
                 (dead_pid,))
        assert c.take_over(keys) == []  # its claim session is still there
        q(pg_conn, "select pg_terminate_backend(%s)", (b_pid,))
        _wait_for(lambda: not q(pg_conn, "select 1 from pg_stat_activity where pid = %s", (b_pid,)), 10,
                  "the terminated session to go")
        assert c.take_over(keys) == keys  # dead process, gone session: at once, lease or not
        with conn_c.cursor() as cur:
            cur.execute(f'select count(*) from "{audit}".llm_claims where claim_token = %s', ("token-c",))
            assert cur.fetchone()[0] == len(keys)
    finally:
        for conn in (conn_a, conn_b, conn_c, admin):
            if not conn.closed:
                conn.close()
