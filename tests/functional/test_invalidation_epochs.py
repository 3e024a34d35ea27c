"""Invalidation holds on every machine (issue 16.5, decision 0024): ``pg_llm.invalidate`` run where
another journal lives reaches only that journal, so every fill checks each uncached key's last
invalidation recorded in Postgres (``llm_invalidations``) and never serves a journal entry older
than it. Two journal directories stand for two machines; the simulator's ledger is the truth of
what was paid."""
from __future__ import annotations

import hashlib

import pytest

from dbt_pg_llm import BufferedSink, DiskJournal, Engine, Model, ResultCache
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.pg.cache_control import InvalidateFilter, invalidate
from dbt_pg_llm.pg.estimate import estimate_column

pytestmark = pytest.mark.functional

KEYS = 40


def _engine(sim, journal_dir) -> Engine:
    settings = {"api_url": sim.base_url, "model_version": "sim-small", "api_key": "sk-test-0123456789",
                "retry": {"max_retries": 0}, "max_concurrency": 16}
    return Engine([Model("sim", settings)], cache=ResultCache(DiskJournal(str(journal_dir))), sinks=[BufferedSink()])


def _fill(connect, sim, journal_dir, source, audit, run_id):
    engine = _engine(sim, journal_dir)  # a new process on that machine: nothing in memory
    try:
        return fill_column(connect, engine, source, {"kind": "complete", "prompt_sql": "body"}, audit_schema=audit,
                           run=RunContext(run_id=run_id, node_id="model.p.enriched"), default_model="sim")
    finally:
        engine.close()
        engine.cache.close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def source(pg_conn):
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{pg_conn.schema}".reviews (id serial primary key, body text)')
        cur.execute(f'insert into "{pg_conn.schema}".reviews (body) select \'review \' || g from generate_series(1, {KEYS}) g')
    return f'"{pg_conn.schema}".reviews'


def test_an_invalidation_from_another_machine_is_honoured_by_this_machines_journal(db, pg_conn, simulator,
                                                                                  source, tmp_path):
    connect, _, audit = db
    simulator.reset()
    journal_a, journal_b = tmp_path / "machine_a", tmp_path / "machine_b"
    first = _fill(connect, simulator, journal_a, source, audit, "run-1")
    assert first.requests_done == KEYS and simulator.stats()["requests"] == KEYS

    # machine B (its own, empty journal) invalidates everything: it can reach only its own journal
    conn_b = connect()
    try:
        done = invalidate(conn_b, audit, ResultCache(DiskJournal(str(journal_b))), InvalidateFilter(all_rows=True))
    finally:
        conn_b.close()
    assert done["invalidated"] == KEYS and done["journal"] == 0

    # after the invalidation, machine A pays one key again and dies before writing it to llm_results:
    # that answer is newer than the invalidation, so it must still be served from A's journal
    engine = _engine(simulator, journal_a)
    try:
        inp = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, "sim").model_input("review 1")
        engine.cache.invalidate(engine.key_of("sim", inp))  # (its own copy knew, so it paid)
        fresh = engine.call("sim", inp)
    finally:
        engine.close()
        engine.cache.close()
    assert fresh.ok and not fresh.cached
    assert simulator.stats()["requests"] == KEYS + 1

    # the estimate on machine A agrees: 39 keys to pay, 1 in the journal
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, "sim")
    engine = _engine(simulator, journal_a)
    conn = connect()
    try:
        est = estimate_column(conn, source, spec, engine.registry.get("sim").config,
                              spec.fingerprint(engine.registry.get("sim").config), audit,
                              in_journal=lambda key, not_before=None: engine.cache.get(key, not_before) is not None)
    finally:
        conn.close()
        engine.close()
        engine.cache.close()
    assert (est.uncached_keys, est.journal_keys) == (KEYS - 1, 1)

    # machine A runs: every invalidated key is requested again, none served stale from its journal
    second = _fill(connect, simulator, journal_a, source, audit, "run-2")
    ledger = simulator.stats()
    print(f"\n[ledger] invalidated on B, rerun on A: requests={ledger['requests']} for {KEYS} distinct keys "
          f"(first run {KEYS}, the crash-recovered key 1, rerun {ledger['requests'] - KEYS - 1})")
    assert second.cache_hits == 1 and second.requests_done == KEYS - 1  # 39 paid; 1 from the journal (no request)
    assert ledger["requests"] == 2 * KEYS
    assert set(ledger["by_prompt_sha256"].values()) == {2}  # each key paid exactly once after invalidating
    with pg_conn.cursor() as cur:
        cur.execute(f'select count(*) from "{audit}".llm_results where valid and run_id = %s', ("run-2",))
        assert cur.fetchone()[0] == KEYS

    # and a third run on A pays nothing: the answers are valid again everywhere
    third = _fill(connect, simulator, journal_a, source, audit, "run-3")
    assert third.cache_hits == KEYS and simulator.stats()["requests"] == 2 * KEYS


def test_a_key_answered_again_after_its_invalidation_keeps_its_invalidation_time(db, pg_conn, simulator, source,
                                                                                 tmp_path):
    """The new answer clears llm_results.invalidated_at, but llm_invalidations keeps the time: when
    the new row expires, an older journal entry on another machine is still not served."""
    connect, _, audit = db
    simulator.reset()
    _fill(connect, simulator, tmp_path / "a", source, audit, "run-1")
    conn = connect()
    conn.autocommit = True
    try:
        invalidate(conn, audit, None, InvalidateFilter(model="sim"))
        _fill(connect, simulator, tmp_path / "b", source, audit, "run-2")  # B answers them again
        with conn.cursor() as cur:
            cur.execute(f'update "{audit}".llm_results set expires_at = now() - interval \'1 second\'')  # expired
            cur.execute(f'select count(*) from "{audit}".llm_invalidations')
            assert cur.fetchone()[0] == KEYS
    finally:
        conn.close()
    third = _fill(connect, simulator, tmp_path / "a", source, audit, "run-3")  # A still holds run-1's answers
    assert third.cache_hits == 0 and simulator.stats()["requests"] == 3 * KEYS
