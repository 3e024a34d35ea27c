"""COPY writers against a real (embedded) Postgres: awkward text round-trips, upserts, throughput."""
from __future__ import annotations

import time

import pytest

from dbt_pg_llm.errors import register_secret
from dbt_pg_llm.models.keys import cache_key, fingerprint, key_sql
from dbt_pg_llm.models.logs import ModelLog
from dbt_pg_llm.pg.migrations import migrate
from dbt_pg_llm.pg.writers import (
    ErrorRow, ResultRow, record_run, resolve_errors, write_alerts, write_calls, write_errors, write_results,
)

pytestmark = pytest.mark.functional

AWKWARD = [
    "",
    "plain",
    "tab\there",
    "new\nline and \r\n crlf",
    "back\\slash \\N \\. \\t literal",
    "\\",
    "quotes ' \" `` '' \"\"",
    "unicode: café, naïve, 日本語, Ελληνικά, עברית",
    "emoji 😀👍🏽 🇫🇷 family 👨‍👩‍👧",
    "\\.",
    "trailing backslash \\",
    "comma, semicolon; pipe | percent %s %(x)s",
    "  leading and trailing spaces  ",
    "\x01\x07\x0b\x1b control chars",
]


@pytest.fixture
def conn(pg_conn):
    return pg_conn  # autocommit


@pytest.fixture
def schema(conn, audit_schema_name):
    migrate(conn, audit_schema_name)
    return audit_schema_name


def _fetch(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_awkward_text_and_json_round_trip(conn, schema):
    rows = [ResultRow(key=f"k{i}", model="m", output_text=t, output_json={"t": t, "n": [i, None, True]},
                      confidence=0.5, prompt_tokens=i, completion_tokens=2 * i, cost_usd=0.000123)
            for i, t in enumerate(AWKWARD)]
    assert write_results(conn, schema, rows) == len(AWKWARD)
    got = dict(((k, (t, j)) for k, t, j in _fetch(conn, f"select key, output_text, output_json from {schema}.llm_results")))
    for i, text in enumerate(AWKWARD):
        assert got[f"k{i}"] == (text, {"t": text, "n": [i, None, True]})


def test_nul_is_stripped_and_none_stays_null(conn, schema):
    write_results(conn, schema, [
        ResultRow(key="nul", model="m", output_text="a\x00b", output_json='{"x": "c\u0000d"}'),
        ResultRow(key="none", model="m", output_text=None, output_json=None, confidence=None),
        ResultRow(key="empty", model="m", output_text="", output_json="[]"),
        {"key": "map", "model": "m", "output_json": "\"just a string\"", "cost_usd": None},
    ])
    got = {k: (t, j) for k, t, j in _fetch(conn, f"select key, output_text, output_json from {schema}.llm_results")}
    assert got["nul"] == ("ab", {"x": "cd"})
    assert got["none"] == (None, None)
    assert got["empty"] == ("", [])  # the empty string is not NULL
    assert got["map"] == (None, "just a string")


def test_sql_key_equals_python_key_on_awkward_text(conn):
    fp = fingerprint(provider="openai", model_version="m", system_message="s", temperature=0, max_tokens=5)
    with conn.cursor() as cur:
        cur.execute("create temp table prompts (i int, p text)")
        for i, text in enumerate(AWKWARD):
            cur.execute("insert into prompts values (%s, %s)", (i, text))
        cur.execute("insert into prompts values (999, null)")
        cur.execute(f"select i, {key_sql(fp, 'p')} from prompts order by i")
        got = dict(cur.fetchall())
    for i, text in enumerate(AWKWARD):
        assert got[i] == cache_key(fp, text), repr(text)
    assert got[999] is None  # NULL prompt -> NULL key


def test_upsert_replaces_an_invalid_row(conn, schema):
    write_results(conn, schema, [ResultRow(key="k", model="m", output_text="old", cost_usd=1)])
    with conn.cursor() as cur:
        cur.execute(f"update {schema}.llm_results set valid = false")
    write_results(conn, schema, [ResultRow(key="k", model="m2", output_text="new", cost_usd=2),
                                 ResultRow(key="k2", model="m", output_text="a"),
                                 ResultRow(key="k2", model="m", output_text="b")])  # last duplicate wins
    assert _fetch(conn, f"select key, model, output_text, valid, cost_usd::float from {schema}.llm_results "
                        "order by key") == [("k", "m2", "new", True, 2.0), ("k2", "m", "b", True, 0.0)]


def test_write_calls_from_model_logs(conn, schema):
    logs = [
        ModelLog(model="m", input_hash="k1", prompt_tokens=3, completion_tokens=4, latency_ms=12.5,
                 cost_usd=0.25, context={"run_id": "r", "node_id": "model.p.x"}),
        ModelLog(model="m", input_hash="k2", attempt=2, error_kind="api", error_message="boom\ttab\nline",
                 http_status=500, context={"run_id": "r"}),
        ModelLog(model="m", input_hash="k3", attempt=0, cached=True, context={"saved_cost_usd": 0.5}),
    ]
    assert write_calls(conn, schema, logs, defaults={"run_id": "dflt", "node_id": "n"}) == 3
    got = _fetch(conn, f"select input_hash, run_id, node_id, error_kind, error_message, http_status, "
                       f"cost_usd::float, cached, saved_cost_usd::float from {schema}.llm_calls order by input_hash")
    assert got == [
        ("k1", "r", "model.p.x", None, None, None, 0.25, False, 0.0),
        ("k2", "r", "n", "api", "boom\ttab\nline", 500, 0.0, False, 0.0),
        ("k3", "dflt", "n", None, None, None, 0.0, True, 0.5),
    ]
    metrics = _fetch(conn, f"select model, requests, errors, cache_hits, cost_usd::float from {schema}.llm_metrics")
    assert metrics == [("m", 2, 1, 1, 0.25)]
    status = _fetch(conn, f"select model, requests_1h, errors_1h, error_rate_1h::float, last_error_message "
                          f"from {schema}.llm_model_status")
    assert status == [("m", 2, 1, 0.5, "api: boom\ttab\nline")]


def test_dead_letters_upsert_resolve_and_redact(conn, schema):
    register_secret("sk-supersecret-123456")
    write_errors(conn, schema, [ErrorRow("k1", "node.a", "m", "api", "failed with key sk-supersecret-123456", "r1", 1),
                                ErrorRow("k2", None, "m", "timeout", "slow", "r1", 3)])
    write_errors(conn, schema, [ErrorRow("k1", "node.a", "m", "invalid_output", "bad label", "r2", 2)])
    rows = _fetch(conn, f"select key, node_id, error_kind, message, attempts, run_id, resolved_at is null "
                        f"from {schema}.llm_errors order by key")
    # attempts: the HTTP requests really made, added up over runs
    assert rows == [("k1", "node.a", "invalid_output", "bad label", 3, "r2", True),
                    ("k2", "", "timeout", "slow", 3, "r1", True)]
    assert resolve_errors(conn, schema, ["k1", "nope"]) == 1
    assert resolve_errors(conn, schema, ["k1"]) == 0  # already resolved
    write_errors(conn, schema, [ErrorRow("k2", "", "m", "api", "Bearer abcdefghijkl", "r3")])
    assert _fetch(conn, f"select message, attempts from {schema}.llm_errors where key = 'k2'") == [("Bearer ***", 3)]  # 3 + 0 attempts (never sent)


def test_dead_letters_keep_their_history_with_node_column_and_run(conn, schema):
    """llm_errors is the current dead letter per (key, node); llm_error_history keeps every failed
    attempt-set, so last night's failure is still there after today's retry failed differently."""
    write_errors(conn, schema, [ErrorRow("k1", "model.p.m", "m", "timeout", "slow", "night", 3, column_name="summary")])
    write_errors(conn, schema, [ErrorRow("k1", "model.p.m", "m", "invalid_output", "bad label", "day", 1,
                                         column_name="summary")])
    assert _fetch(conn, f"select error_kind, column_name, run_id, attempts from {schema}.llm_errors") == [
        ("invalid_output", "summary", "day", 4)]
    history = _fetch(conn, f"select key, node_id, column_name, error_kind, message, attempts, run_id "
                           f"from {schema}.llm_error_history order by id")
    assert history == [("k1", "model.p.m", "summary", "timeout", "slow", 3, "night"),
                       ("k1", "model.p.m", "summary", "invalid_output", "bad label", 1, "day")]
    assert resolve_errors(conn, schema, ["k1"]) == 1  # resolving the dead letter keeps its history
    assert len(_fetch(conn, f"select 1 from {schema}.llm_error_history where key = 'k1'")) == 2


def test_alerts_and_runs(conn, schema):
    from dbt_pg_llm.models.alerts import ModelAlert

    write_alerts(conn, schema, [ModelAlert("m", "cost", "spent $5", "critical"),
                                {"model": "m", "alert_type": "latency", "message": "slow"}], run_id="r")
    assert _fetch(conn, f"select run_id, model, alert_type, severity from {schema}.llm_alerts order by id") == [
        ("r", "m", "cost", "critical"), ("r", "m", "latency", "warning")]
    # requests / tokens / cost / hits / saved come from llm_calls whatever is passed (issue 17.1):
    # 3 paid requests, key "a" hit twice (counts once), key "b" hit but also paid by the run (no saving)
    write_calls(conn, schema, [
        ModelLog(model="m", input_hash="b", prompt_tokens=10, completion_tokens=2, cost_usd=0.5),
        ModelLog(model="m", input_hash="c", attempt=1, cost_usd=0.125, error_kind="timeout"),
        ModelLog(model="m", input_hash="c", attempt=2, prompt_tokens=5, completion_tokens=1, cost_usd=0.125),
        {"model": "m", "input_hash": "a", "cached": True, "saved_cost_usd": 1.0},
        {"model": "m", "input_hash": "a", "cached": True, "saved_cost_usd": 1.0},
        {"model": "m", "input_hash": "b", "cached": True, "saved_cost_usd": 0.5},
        ModelLog(model="m", input_hash="x", cost_usd=9.0, context={"run_id": "other"}),
    ], defaults={"run_id": "inv1"})
    record_run(conn, schema, "inv1", target="dev", status="success", rows=10, requests=3, cost_usd=0.5)
    record_run(conn, schema, "inv1", status="error", rows=5, errors=1, cost_usd=0.25, saved_cost_usd=1)
    record_run(conn, schema, "inv1", status="success", rows=1)
    assert _fetch(conn, f"select target, status, rows, requests, errors, cost_usd::float, saved_cost_usd::float, "
                        f"cache_hits, prompt_tokens, completion_tokens, ended_at is not null, settled_at is not null "
                        f"from {schema}.llm_runs") == [("dev", "failed", 16, 3, 1, 0.75, 1.0, 1, 15, 3, True, True)]


def test_write_results_throughput(conn, schema, record_property):
    n = 10_000
    rows = [ResultRow(key=f"{i:064x}", model="m", model_version="v", fingerprint="f" * 64,
                      output_text=f"answer number {i} with some\ttext\nand more words " * 3,
                      output_json=None, confidence=0.9, prompt_tokens=40, completion_tokens=12,
                      cost_usd=0.0000123, run_id="r") for i in range(n)]
    started = time.perf_counter()
    assert write_results(conn, schema, rows) == n
    elapsed = time.perf_counter() - started
    rate = n / elapsed
    record_property("write_results_rows_per_s", round(rate))
    print(f"\nwrite_results: {n} rows in {elapsed:.3f}s = {rate:,.0f} rows/s")
    started = time.perf_counter()
    write_results(conn, schema, rows)  # all conflicts -> updates
    print(f"write_results (all updates): {n / (time.perf_counter() - started):,.0f} rows/s")
    assert rate > 5_000


def test_run_row_is_running_while_fills_are_active_then_takes_the_worst_outcome(conn, schema):
    from dbt_pg_llm.pg.runs import mark_crashed_runs, run_started

    run_started(conn, schema, "inv", target="dev")  # two models of one invocation (dbt threads)
    run_started(conn, schema, "inv")
    write_calls(conn, schema, [ModelLog(model="m", cost_usd=0.1), ModelLog(model="m", cost_usd=0.2)],
                defaults={"run_id": "inv"})
    record_run(conn, schema, "inv", status="partial", finished_fill=True, requests=2, cost_usd=0.1 + 0.2)
    row = "select status, outcome, active_fills, ended_at is null, cost_usd::text from {}.llm_runs where run_id = 'inv'"
    assert _fetch(conn, row.format(schema)) == [("running", "partial", 1, True, "0.3")]  # not 0.30000000000000004
    record_run(conn, schema, "inv", status="success", finished_fill=True, requests=1)
    assert _fetch(conn, row.format(schema)) == [("partial", "partial", 0, False, "0.3")]
    # a run that died while running is marked crashed by a later run, once its heartbeat is old
    run_started(conn, schema, "dead")
    assert mark_crashed_runs(conn, schema, dead_after_s=3600) == 0
    with conn.cursor() as cur:
        cur.execute(f"update {schema}.llm_runs set heartbeat_at = now() - interval '2 hours' where run_id = 'dead'")
    write_calls(conn, schema, [ModelLog(model="m", cost_usd=0.25, prompt_tokens=7)], defaults={"run_id": "dead"})
    run_started(conn, schema, "next")
    assert dict(_fetch(conn, f"select run_id, status from {schema}.llm_runs")) == {
        "inv": "partial", "dead": "crashed", "next": "running"}
    # the crashed run never recorded its counts: settling derived them from the llm_calls rows it left
    assert _fetch(conn, f"select requests, prompt_tokens, cost_usd::float, settled_at is not null "
                        f"from {schema}.llm_runs where run_id = 'dead'") == [(1, 7, 0.25, True)]
