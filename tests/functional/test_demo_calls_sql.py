"""The demo's per-run llm_calls figures (integration_tests/demo.py CALLS_SQL) count cache hits as
llm_runs does (pg/run_totals.py): a key the run paid for and then hit (two models sharing a prompt:
the guaranteed cascade's sim stage and review_sentiment) is no hit; a key hit twice counts once."""
from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

DEMO = Path(__file__).resolve().parents[2] / "integration_tests" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("pg_llm_demo_calls", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calls_sql_counts_hits_of_keys_the_run_did_not_pay(pg):
    import psycopg2

    demo = _demo()
    schema = f"demo_calls_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(**pg.connect_kwargs())
    conn.autocommit = True
    cur = conn.cursor()
    try:
        cur.execute(f'create schema "{schema}"')
        cur.execute(f'create table "{schema}".llm_calls (ts timestamptz, run_id text, input_hash text, cached boolean, '
                    'prompt_tokens int, completion_tokens int, cost_usd numeric, saved_cost_usd numeric)')
        rows = [  # run a: k1 paid then hit (no saving), k2 hit twice (one hit), a request without a hash
                  ("a", "k1", False, 10, 2, 0.3, 0), ("a", "k1", True, 0, 0, 0, 0.3),
                  ("a", "k2", True, 0, 0, 0, 0.5), ("a", "k2", True, 0, 0, 0, 0.5),
                  ("a", None, False, 5, 1, 0.1, 0),
                  # run b: everything cached
                  ("b", "k1", True, 0, 0, 0, 0.3), ("b", "k2", True, 0, 0, 0, 0.5)]
        for i, (run, key, cached, p, c, cost, saved) in enumerate(rows):
            cur.execute(f'insert into "{schema}".llm_calls values (now() + %s * interval \'1 ms\' '
                        f'+ (case when %s = \'b\' then interval \'1 s\' else interval \'0\' end), '
                        '%s, %s, %s, %s, %s, %s, %s)', (i, run, run, key, cached, p, c, cost, saved))
        cur.execute(demo.CALLS_SQL.replace(f"{demo.AUDIT_SCHEMA}.llm_calls", f'"{schema}".llm_calls'))
        got = [(r[0], int(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5])) for r in cur.fetchall()]
        assert got == [("a", 2, 1, 18, 0.4, 0.5), ("b", 0, 2, 0, 0.0, 0.8)]
    finally:
        cur.execute(f'drop schema if exists "{schema}" cascade')
        conn.close()
