"""Operating the adapter (issue 9): the usage report, alert webhooks, the audit sources, `dbt debug`
endpoint checks, the show/compile notice and dispatch under target.type pg_llm.

One seeded copy of integration_tests/ per module (dbtRunner in-process, embedded Postgres, the
simulator); each test gets its own audit schema and journal (``fresh_llm``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dbt_harness import seeded_project

OPS_MODELS = {
    # Every 5th of the first 60 reviews carries a simulator fault marker: those keys always fail.
    "flaky_reviews.sql": """
{{ pg_llm.llm_enrich(
    "select review_id, case when mod(review_id, 5) = 0 then review_text || ' [[fault:400]]' "
    ~ "else review_text end as prompt from " ~ ref('product_reviews')
    ~ " where review_id <= 60 and review_text is not null",
    {'sentiment': pg_llm.classify('prompt', labels=['positive', 'negative', 'neutral'])}
) }}
""",
    # A user model over the audit schema, through the sources the pg_llm package ships.
    "audit_costs.sql": """
select model, count(*) as calls, sum(cost_usd) as cost_usd
from {{ source('pg_llm', 'llm_calls') }}
group by model
""",
}


@pytest.fixture(scope="module")
def project(pg, simulator, tmp_path_factory):
    yield from seeded_project(tmp_path_factory, pg, simulator.base_url, OPS_MODELS)


ALERTING = {"LLM_ALERT_MAX_ERROR_RATE": "0.05", "LLM_ALERT_MIN_REQUESTS": "5"}


def _table_counts(project) -> dict[str, int]:
    tables = [r[0] for r in project.query(
        "select table_name from information_schema.tables where table_schema = %s and table_type = 'BASE TABLE'",
        (project.audit,))]
    return {t: project.scalar(f'select count(*) from "{project.audit}"."{t}"') for t in sorted(tables)}


# -- the usage report ---------------------------------------------------------------------------------

def test_report_run_operation_prints_per_model_usage_and_changes_nothing(fresh_llm, simulator):
    project = fresh_llm
    empty = project.run("run-operation", "pg_llm.report", "--args", "{days: 7}")
    assert "does not exist yet" in empty.text

    project.run("run", "-s", "flaky_reviews", **ALERTING)   # pays; the fault keys fail; an alert
    project.run("run", "-s", "flaky_reviews", **ALERTING)   # cached keys are hits; fault keys fail again
    audit = f'"{project.audit}"'
    requests, errors, hits = project.query(
        f"select count(*) filter (where not cached), count(*) filter (where error_kind is not null), "
        f"count(*) filter (where cached) from {audit}.llm_calls")[0]
    assert errors > 0 and hits > 0
    cost, saved = project.query(f"select sum(cost_usd), sum(saved_cost_usd) from {audit}.llm_calls")[0]
    dead = project.scalar(f"select count(*) from {audit}.llm_errors where resolved_at is null")
    before, ledger = _table_counts(project), simulator.stats()["requests"]

    out = project.run("run-operation", "pg_llm.report", "--args", "{days: 7}")
    text = out.text
    assert "model sim" in text
    assert f"requests {requests:,}, errors {errors:,} (invalid_input={errors}), open dead letters {dead}" in text
    assert f"cache hits {hits:,}, hit rate {hits / (hits + requests):.1%}, saved by the cache ${float(saved):,.4f}" in text
    assert f"cost ${float(cost):,.4f}" in text
    assert "latency p50 " in text and " ms, p95 " in text
    assert "open alerts: 1" in text and "] error_rate: error rate" in text
    # read-only: no table changed, nothing was requested
    assert _table_counts(project) == before and simulator.stats()["requests"] == ledger

    bad = project.run("run-operation", "pg_llm.report", "--args", "{days: -1}", expect=False)
    assert "days: -1 must be a positive number" in bad.text


# -- the audit schema as dbt sources ------------------------------------------------------------------

def test_audit_schema_is_documented_as_sources_users_can_select_from(fresh_llm):
    project = fresh_llm
    project.run("run", "-s", "flaky_reviews")
    audit_var = json.dumps({"pg_llm_audit_schema": project.audit})
    project.run("run", "-s", "audit_costs", "--vars", audit_var)
    rows = project.query(f'select model, calls from "{project.schema}".audit_costs')
    assert rows == [("sim", project.scalar(f'select count(*) from "{project.audit}".llm_calls'))]

    project.run("docs", "generate", "--vars", audit_var)
    manifest = json.loads((project.path / "target" / "manifest.json").read_text())
    catalog = json.loads((project.path / "target" / "catalog.json").read_text())
    sources = {s["name"]: s for s in manifest["sources"].values() if s["source_name"] == "pg_llm"}
    # every table and view of the audit schema, and every column, is documented
    actual: dict[str, set] = {}
    for table, column in project.query(
            "select c.table_name, c.column_name from information_schema.columns c "
            "join information_schema.tables t using (table_schema, table_name) "
            "where c.table_schema = %s and t.table_name not like 'llm_calls\\_%%'", (project.audit,)):
        actual.setdefault(table, set()).add(column)
    assert set(sources) == set(actual), "tables of the audit schema without a source entry (or the reverse)"
    for table, columns in actual.items():
        documented = sources[table]["columns"]
        assert set(documented) == columns, f"{table}: columns not documented: {columns - set(documented)}"
        assert sources[table]["description"] and all(c["description"] for c in documented.values()), table
        assert sources[table]["schema"] == project.audit
    assert "source.pg_llm.pg_llm.llm_calls" in catalog["sources"]
    assert "saved_cost_usd" in catalog["sources"]["source.pg_llm.pg_llm.llm_calls"]["columns"]


# -- alerts that reach someone ------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on loopback: records JSON bodies; ``mode`` = ok | 500 | slow."""

    def __init__(self):
        import http.server
        import threading

        receiver = self
        self.bodies: list[dict] = []
        self.mode = "ok"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                if receiver.mode == "slow":
                    import time
                    time.sleep(2.0)
                status = 500 if receiver.mode == "500" else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"boom")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_alert_webhook_posts_each_new_alert_and_its_failures_never_fail_the_run(fresh_llm, receiver):
    project = fresh_llm
    env = {**ALERTING, "DBT_ENV_SECRET_LLM_ALERT_WEBHOOK_URL": receiver.url}
    project.run("run", "-s", "flaky_reviews", **env)
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    alert = body["alert"]
    assert (alert["model"], alert["type"]) == ("sim", "error_rate") and alert["severity"] in ("warning", "critical")
    assert body["text"].startswith("pg_llm alert [") and "error rate" in body["text"]
    assert {f["title"] for f in body["attachments"][0]["fields"]} >= {"model", "type", "severity", "run_id"}
    stored = project.query(f'select run_id, message from "{project.audit}".llm_alerts')
    assert [(alert["run_id"], alert["message"])] == stored

    # a failing webhook (HTTP 500, refused, timeout) is logged and the run succeeds
    receiver.mode = "500"
    out = project.run("run", "-s", "flaky_reviews", **env)
    assert "alert webhook: could not deliver the error_rate alert of sim: the webhook answered HTTP 500" in out.text
    refused = f"http://127.0.0.1:{_free_port()}/hook"
    out = project.run("run", "-s", "flaky_reviews", **{**env, "DBT_ENV_SECRET_LLM_ALERT_WEBHOOK_URL": refused})
    assert "alert webhook: could not deliver the error_rate alert of sim: ConnectError" in out.text
    receiver.mode = "slow"
    out = project.run("run", "-s", "flaky_reviews", LLM_ALERT_WEBHOOK_TIMEOUT_MS="300", **env)
    assert "no answer within webhook_timeout_ms=300" in out.text
    assert project.scalar(f'select count(*) from "{project.audit}".llm_alerts') == 4
    assert receiver.url not in out.text and "secret-token" not in out.text


def test_alert_webhook_url_is_validated_with_key_path_and_fix(fresh_llm):
    out = fresh_llm.run("parse", DBT_ENV_SECRET_LLM_ALERT_WEBHOOK_URL="hooks.slack.com/services/x", expect=False)
    assert "llm.alerts.webhook_url: not an http(s) URL (it has no scheme)" in out.text


# -- dbt debug checks each endpoint without paying ----------------------------------------------------

def test_dbt_debug_checks_each_llm_endpoint_without_paying_or_printing_the_key(fresh_llm, simulator_factory):
    from dbt_pg_llm.simulator import SimulatorConfig

    project = fresh_llm
    key = "sk-test-DEBUG-" + uuid.uuid4().hex
    # --models: other names get 404 model_not_found, as OpenAI answers (a server answering any name
    # makes a model the listing lacks a warning: tests/unit/test_endpoints.py)
    guarded = simulator_factory(SimulatorConfig(api_key=key, models=("sim-small", "sim-large")))
    env = {"LLM_API_URL": guarded.base_url, "DBT_ENV_SECRET_LLM_API_KEY": key}
    texts = []

    good = project.run("debug", **env)
    texts.append(good.text)
    assert "pg_llm endpoint sim: OK: reachable, key accepted, model 'sim-small' known" in good.text
    assert "pg_llm endpoint sim_large: OK: reachable, key accepted, model 'sim-large' known" in good.text
    assert "All checks passed" in good.text

    wrong = project.run("debug", **{**env, "DBT_ENV_SECRET_LLM_API_KEY": "sk-test-WRONG-" + uuid.uuid4().hex},
                        expect=False)
    texts.append(wrong.text)
    assert "sim: FAILED: key rejected (HTTP 401" in wrong.text and "check the model's api_key" in wrong.text

    unknown = project.run("debug", LLM_MODEL="sim-nonexistent", **env, expect=False)
    assert "sim: FAILED: reachable, key accepted, but model_version 'sim-nonexistent' is not among" in unknown.text
    assert "a 1-token request to it failed (HTTP 404" in unknown.text
    assert "sim_large: OK" in unknown.text

    closed = project.run("debug", **{**env, "LLM_API_URL": f"http://127.0.0.1:{_free_port()}/v1"}, expect=False)
    assert "sim: FAILED: unreachable: http://127.0.0.1:" in closed.text and "check api_url" in closed.text

    assert guarded.stats()["cost_usd"] == 0  # listing models is free; the 1-token request got a 404
    assert not [t for t in texts if key in t]


# -- show / compile say once that uncached keys stay empty ---------------------------------------------

NOTE = "requests no LLM answers: the LLM columns of rows whose answers are not cached yet are empty (NULL)"


def test_show_and_compile_say_once_that_uncached_llm_columns_stay_empty(fresh_llm, simulator):
    project = fresh_llm
    shown = project.run("show", "-s", "flaky_reviews", "--limit", "3")
    assert shown.text.count(NOTE) == 1 and "`dbt show` " + NOTE in shown.text
    compiled = project.run("compile")   # several LLM models: still once
    assert compiled.text.count(NOTE) == 1 and "`dbt compile` " + NOTE in compiled.text
    ran = project.run("run", "-s", "flaky_reviews")
    assert NOTE not in ran.text
    assert simulator.stats()["requests"] > 0


# -- the HTML report, rendered in headless Chromium ---------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parents[2] / "target" / "test-artifacts"
CHARTS_JS = """JSON.stringify([...document.querySelectorAll('.js-plotly-plot')].map(d => ({
    id: d.id, svg: d.querySelectorAll('.main-svg').length, traces: (d.data || []).length,
    marks: d.querySelectorAll('.point, .bars path, .scatterlayer .trace').length})))"""


def _cli(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbt_pg_llm", *args, "--project-dir", str(project.path),
                           "--profiles-dir", str(project.path)],
                          env={**os.environ, **project.env()}, capture_output=True, text=True, timeout=300)


def test_html_report_from_the_profile_renders_its_charts_in_headless_chromium(fresh_llm):
    from headless_chromium import load_page

    project = fresh_llm
    project.run("run", "-s", "flaky_reviews", **ALERTING)
    project.run("run", "-s", "flaky_reviews", **ALERTING)
    text = _cli(project, "report", "--days", "7")
    assert text.returncode == 0, text.stderr
    assert "model sim" in text.stdout and "invalid_input=" in text.stdout and "open alerts: 1" in text.stdout

    page = ARTIFACTS / "report.html"
    made = _cli(project, "report", "--html", str(page))
    assert made.returncode == 0, made.stderr
    html = page.read_text()
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js is inlined
    shot = ARTIFACTS / "report.png"
    result = load_page(page.as_uri(), CHARTS_JS, screenshot=shot)
    assert result["errors"] == []
    assert [u for u in result["requested"] if not u.startswith(("file:", "data:"))] == []  # works offline
    charts = {c["id"]: c for c in json.loads(result["value"])}
    assert set(charts) == {"cost_per_day", "latency_distribution", "error_kinds", "cache_hit_rate", "top_nodes"}
    for chart in charts.values():
        assert chart["svg"] >= 1 and chart["traces"] >= 1 and chart["marks"] >= 1, chart
    assert shot.stat().st_size > 50_000
    print(f"\nHTML report screenshot: {shot}")

    # the browser check itself catches a broken page
    broken = load_page("data:text/html,<script>console.error('boom'); undefinedFunction()</script>")
    assert any("boom" in e for e in broken["errors"]) and any("undefinedFunction" in e for e in broken["errors"])


def test_report_cli_names_a_wrong_target_with_the_fix(fresh_llm):
    out = _cli(fresh_llm, "report", "--target", "nope")
    assert out.returncode == 2 and "nope" in out.stderr and "Traceback" not in out.stderr


def test_missing_chromium_fails_with_the_install_command(monkeypatch):
    import headless_chromium

    monkeypatch.setattr(headless_chromium.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"Chromium is not installed.*apt-get install -y chromium"):
        headless_chromium.chromium_binary()


# -- target.type is pg_llm: adapter.dispatch falls back to a package's postgres__ macros ----------------

TINY_PACKAGE = {
    "dbt_project.yml": "name: tiny_pkg\nversion: '1.0.0'\nconfig-version: 2\nmacro-paths: ['macros']\n",
    "macros/flavor.sql": """
{% macro flavor() %}{{ return(adapter.dispatch('flavor', 'tiny_pkg')()) }}{% endmacro %}
{% macro default__flavor() %}{{ return('default') }}{% endmacro %}
{% macro postgres__flavor() %}{{ return('postgres') }}{% endmacro %}
{% macro by_target_type() %}{{ return('postgres' if target.type == 'postgres' else 'other') }}{% endmacro %}
{% macro by_target_type_fixed() %}{{ return('postgres' if target.type in ('postgres', 'pg_llm') else 'other') }}{% endmacro %}
""",
}


def test_dispatch_of_a_packages_postgres_macro_works_under_pg_llm(pg, simulator, tmp_path):
    from dbt_harness import INTEGRATION, DbtProject

    package, root = tmp_path / "tiny_pkg", tmp_path / "proj"
    for base, files in ((package, TINY_PACKAGE), (root, {
        "dbt_project.yml": "name: uses_tiny\nversion: '1.0.0'\nconfig-version: 2\nprofile: pg_llm_integration\n"
                           "model-paths: ['models']\n",
        "packages.yml": f"packages:\n  - local: {package}\n",
        "profiles.yml": (INTEGRATION / "profiles.yml").read_text(),
        "models/flavors.sql": "select '{{ target.type }}' as target_type, '{{ tiny_pkg.flavor() }}' as dispatched, "
                              "'{{ tiny_pkg.by_target_type() }}' as naive, "
                              "'{{ tiny_pkg.by_target_type_fixed() }}' as fixed",
    })):
        for name, text in files.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_text(text)
    project = DbtProject(root, pg, simulator.base_url, schema=f"disp_{uuid.uuid4().hex[:8]}")
    project.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_d_{uuid.uuid4().hex[:8]}", "LLM_JOURNAL_DIR": str(tmp_path / "j")}
    try:
        project.run("deps")
        project.run("run")
        assert project.query(f'select * from "{project.schema}".flavors') == [("pg_llm", "postgres", "other", "postgres")]
    finally:
        project.query(f'drop schema if exists "{project.schema}" cascade')
