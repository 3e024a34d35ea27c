"""LlmFrameSession over pandas Series: same keys, cache and audit rows as fill_column (real PG + simulator)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from dbt_pg_llm import BufferedSink, ConfigError, Engine, MemoryBackend, Model, ResultCache
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.operators.frame import LlmFrameSession

pytestmark = pytest.mark.functional

AWKWARD = ["tab\there", "new\nline", "back\\slash", "quotes ' \" ", "café 日本語", "emoji 😀👍🏽", "",
           "nul\x00inside"]


def make_engine(sim) -> Engine:
    return Engine([Model("sim", {"api_url": sim.base_url, "model_version": "sim-small", "api_key": "sk-x-123456",
                                 "retry": {"max_retries": 0}})],
                  cache=ResultCache(MemoryBackend()), sinks=[BufferedSink()])


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_series_columns_are_aligned_cached_and_audited(db, pg_conn, simulator):
    connect, schema, audit = db
    simulator.reset()
    values = ["good", "bad", None, float("nan"), "good", 42] + AWKWARD
    series = pd.Series(values, index=[f"r{i}" for i in range(len(values))], name="review")
    engine = make_engine(simulator)
    run = RunContext("inv-py", "model.p.py_model")
    try:
        session = LlmFrameSession(connect, engine, audit, run, "sim")
        summary = session.complete(series, system="Be brief.", max_tokens=40)
        labels = session.classify(series, ["positive", "negative"], instructions="Judge the tone.", column="tone")
        facts = session.extract(series, {"type": "object", "properties": {"topic": {"type": "string"}},
                                         "required": ["topic"]})
        n_distinct = len({str(v).replace("\x00", "") for v in values if v is not None and not
                          (isinstance(v, float) and math.isnan(v))})
        assert simulator.stats()["requests"] == 3 * n_distinct
        assert set(simulator.stats()["by_prompt_sha256"].values()) == {3}  # once per key per column kind

        for out in (summary, labels, facts):
            assert list(out.index) == list(series.index) and out.dtype == object
            assert out["r2"] is None and out["r3"] is None  # None / NaN prompts: no answer, no request
            assert out["r0"] == out["r4"]  # duplicates share one answer
        assert all(isinstance(v, str) and v for k, v in summary.items() if k not in ("r2", "r3"))
        assert set(labels.drop(["r2", "r3"])) <= {"positive", "negative"}
        assert all(isinstance(v, dict) and "topic" in v for v in facts.drop(["r2", "r3"]))
        assert session.reports[0].rows == len(values) and session.reports[0].requests_done == n_distinct

        # the same prompts from SQL hit the same keys: zero new requests
        with pg_conn.cursor() as cur:
            cur.execute("create table src (body text)")
            for v in series.tolist():
                ok = v is not None and not (isinstance(v, float) and math.isnan(v))
                cur.execute("insert into src values (%s)", (str(v).replace("\x00", "") if ok else None,))
        spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": ["positive", "negative"],
                                     "instructions": "Judge the tone."}, "sim")
        before = simulator.stats()["requests"]
        rep = fill_column(connect, make_engine(simulator), f'"{schema}".src', spec, audit_schema=audit,
                          run=RunContext("inv-sql", "model.p.sql"))
        assert rep.requests_done == 0 and rep.cache_hits == n_distinct
        assert simulator.stats()["requests"] == before

        # a second session call is free too
        again = session.classify(series, ["positive", "negative"], instructions="Judge the tone.")
        assert again.equals(labels) and simulator.stats()["requests"] == before
    finally:
        engine.close()
    # column_name: the column= given, else the input series' name (pg_llm.invalidate matches it)
    named = q(pg_conn, f"select column_name, count(*) from \"{audit}\".llm_results where node_id = 'model.p.py_model' "
                       "group by 1 order by 1")
    assert named == [("review", 2 * n_distinct), ("tone", n_distinct)]
    runs = q(pg_conn, f'select rows, requests, cache_hits from "{audit}".llm_runs where run_id = %s', ("inv-py",))
    # the second classify found its keys answered, but by this very run: not a saving (issue 17.1)
    assert runs == [(4 * len(values), 3 * n_distinct, 0)]
    calls = q(pg_conn, f"select operation, cached, count(*) from \"{audit}\".llm_calls where run_id = 'inv-py' "
                       "and node_id = 'model.p.py_model' group by 1, 2 order by 1, 2")
    assert calls == [("classify", False, n_distinct), ("classify", True, n_distinct),
                     ("complete", False, n_distinct), ("extract", False, n_distinct)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_frame_prompts') == [(0,)]


def test_empty_and_all_null_series_make_no_request(db, simulator):
    connect, _, audit = db
    simulator.reset()
    engine = make_engine(simulator)
    try:
        session = LlmFrameSession(connect, engine, audit, RunContext("r"), "sim")
        assert session.complete(pd.Series([], dtype=object)).empty
        out = session.complete(pd.Series([None, float("nan")]))
        assert out.tolist() == [None, None]
    finally:
        engine.close()
    assert simulator.stats()["requests"] == 0


def test_bad_schema_or_labels_are_refused_before_any_request(db, pg_conn, simulator):
    connect, _, audit = db
    simulator.reset()
    engine = make_engine(simulator)
    reviews = pd.Series([f"review {i}" for i in range(32)], name="review")
    try:
        session = LlmFrameSession(connect, engine, audit, RunContext("r", "model.p.py_model"), "sim")
        with pytest.raises(ConfigError) as info:
            session.extract(reviews, {"type": "objekt"})
        assert "session.llm.extract(review).schema/type: 'objekt'" in str(info.value)
        with pytest.raises(ConfigError, match="refers outside this schema"):
            session.extract(reviews, {"properties": {"a": {"$ref": "http://127.0.0.1:9/a.json"}}})
        with pytest.raises(ConfigError, match=r"session.llm.classify\(review\).labels\[1\]: 3 is int"):
            session.classify(reviews, ["a", 3])
        with pytest.raises(ConfigError, match="NUL"):
            session.classify(reviews, ["a\x00b", "c"])
    finally:
        engine.close()
    assert simulator.stats()["requests"] == 0
    assert q(pg_conn, "select count(*) from pg_namespace where nspname = %s", (audit,)) == [(0,)]
