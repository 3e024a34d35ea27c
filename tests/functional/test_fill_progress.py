"""Progress and provenance of a fill (issue 9): at most every 10 s or per 10% of the keys, with the retries and
HTTP 429s seen so far and an ETA at the observed rate — real Postgres, real simulator."""
from __future__ import annotations

import pytest
from test_pg_enrich import make_engine, make_source, spec

from dbt_pg_llm.pg import RunContext, fill_column
from dbt_pg_llm.pg.progress import ProgressPacer

pytestmark = pytest.mark.functional


def test_progress_per_tenth_of_keys_with_retries_429s_and_eta(db, pg_conn, simulator):
    simulator.reset()
    connect, schema, audit = db
    # 40 keys; every 8th is answered 429 once, then succeeds on the retry
    prompts = [f"review {i}" + (" [[fault:429*1]]" if i % 8 == 0 else "") for i in range(40)]
    source = make_source(pg_conn, schema, prompts)
    engine = make_engine(simulator, max_retries=2)
    progress: list[dict] = []
    try:
        rep = fill_column(connect, engine, source, spec(), audit_schema=audit, window=1,
                          run=RunContext(run_id="run-p", node_id="model.p.progress"), progress=progress.append)
    finally:
        engine.close()
    assert rep.errors == 0 and simulator.stats()["requests"] == 45
    done = [p["requests_done"] for p in progress]
    # one event per 10% step (40 keys: every 4), plus the start and the final summary: not one per flush
    steps = {d * 10 // 40 for d in done}
    assert steps == set(range(11)), done
    assert len(progress) <= 13, done
    last = progress[-1]
    assert (last["retries"], last["rate_limited"]) == (5, 5)
    assert any(p["eta_s"] and 0 < p["requests_done"] < 40 for p in progress)


def test_pacer_waits_10_s_between_lines_unless_a_tenth_more_is_done():
    pacer = ProgressPacer()
    pacer.mark(0, 1000, now=0.0)
    assert not pacer.due(50, 1000, now=5.0)  # 5% and 5 s: quiet
    assert pacer.due(100, 1000, now=6.0)  # 10%: a line
    assert not pacer.due(150, 1000, now=9.0)
    assert pacer.due(160, 1000, now=16.5)  # 10 s later


def test_python_model_frames_record_the_same_provenance(db, simulator):
    """LlmFrameSession (dbt Python models) stores node, model, version, fingerprint, run and prompt;
    with store_prompts=False only the key."""
    import pandas as pd

    from dbt_pg_llm.operators.frame import LlmFrameSession

    simulator.reset()
    connect, _, audit = db
    engine = make_engine(simulator)
    try:
        for node, store in (("model.p.py_kept", True), ("model.p.py_hashed", False)):
            session = LlmFrameSession(connect, engine, audit, RunContext("inv-py", node), "sim", store_prompts=store)
            session.classify(pd.Series([f"{node} good", f"{node} bad"]), ["positive", "negative"])
    finally:
        engine.close()
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'select node_id, model, model_version, fingerprint is not null, run_id, prompt '
                        f'from "{audit}".llm_results order by node_id, prompt')
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == [("model.p.py_hashed", "sim", "sim-small", True, "inv-py", None)] * 2 + [
        ("model.p.py_kept", "sim", "sim-small", True, "inv-py", "model.p.py_kept bad"),
        ("model.p.py_kept", "sim", "sim-small", True, "inv-py", "model.p.py_kept good")]
