"""The dbt adapter end to end: dbtRunner in-process against embedded Postgres and the simulator.

One copy of integration_tests/ (plus two small models under models/functional/) is seeded once per
module; every test gets its own audit schema and journal directory (so its own cache and Engine),
and reads the simulator's ledger to count what was paid for.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dbt_harness import TIMINGS, seeded_project
from dbt_harness import INTEGRATION, DbtProject  # noqa: F401  (older test modules import them from here)

LABELS = ("positive", "negative", "neutral")
TOPICS = ("quality", "durability", "comfort", "performance", "price", "shipping", "other")
NOT_FUNCTIONAL = ("--exclude", "path:models/functional")

FUNCTIONAL_MODELS = {
    # The prompt of 5-star reviews gets a prefix from a var: changing it changes only those keys.
    "changing_sentiment.sql": """
{{ pg_llm.llm_enrich(
    "select review_id, rating, case when rating = 5 then '" ~ var('five_star_prefix', '') ~ "' || review_text"
    ~ " else review_text end as prompt from " ~ ref('product_reviews'),
    {'sentiment': pg_llm.classify('prompt', labels=['positive', 'negative', 'neutral'])}
) }}
""",
    # Every 10th review of the first 100 carries a simulator fault marker in its prompt.
    "faulty_reviews.sql": """
{{ pg_llm.llm_enrich(
    "select review_id, review_text, case when mod(review_id, 10) = 0 then review_text || ' "
    ~ var('fault_marker', '[[fault:400*1]]') ~ "' else review_text end as prompt from "
    ~ ref('product_reviews') ~ " where review_id <= 100 and review_text is not null",
    {'sentiment': pg_llm.classify('prompt', labels=['positive', 'negative', 'neutral'])},
    on_error=var('on_error', none)
) }}
""",
    # A Python incremental model: only reviews newer than the table's max id are classified.
    "py_incremental_topics.py": """
def model(dbt, session):
    dbt.config(materialized="incremental", unique_key="review_id", incremental_strategy="delete+insert")
    reviews = dbt.ref("product_reviews")
    reviews = reviews[reviews["review_text"].notna()]
    reviews = reviews[reviews["review_id"] <= int(dbt.config.get("max_review_id"))]
    if dbt.is_incremental:
        newest = session.sql(f"select coalesce(max(review_id), 0) as m from {dbt.this}")["m"][0]
        reviews = reviews[reviews["review_id"] > newest]
    reviews = reviews[["review_id", "review_text"]].copy()
    reviews["topic"] = session.llm.classify(reviews["review_text"], labels=["quality", "price", "other"])
    return reviews
""",
    # A strategy model from the profile: sim first, sim_large when sim is unsure.
    "cascade_sentiment.sql": """
{{ pg_llm.llm_enrich(ref('product_reviews'),
    {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'], model='sim_cascade')}
) }}
""",
    # The first 200 reviews, for the spend cap tests.
    "budget_sentiment.sql": """
{{ pg_llm.llm_enrich(
    "select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 200",
    {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'])}
) }}
""",
    "functional.yml": """
version: 2
models:
  - name: py_incremental_topics
    config:
      max_review_id: "{{ var('max_review_id') }}"
""",
}


@pytest.fixture(scope="module")
def project(pg, simulator, tmp_path_factory):
    yield from seeded_project(tmp_path_factory, pg, simulator.base_url, FUNCTIONAL_MODELS)
    print("\ndbt invocation times (s):", json.dumps({k: round(v, 2) for k, v in TIMINGS.items()}))


def distinct_texts(project, where: str = "true") -> int:
    return project.scalar(
        f"select count(distinct review_text) from {project.seed_table()} where review_text is not null and {where}")


def texts_new_after(project, max_id: int) -> int:
    """Distinct review texts of rows after ``max_id`` that no earlier row has: what an incremental run pays for."""
    seed = project.seed_table()
    return project.scalar(
        f"select count(distinct review_text) from {seed} where review_id > {max_id} and review_text is not null "
        f"and review_text not in (select review_text from {seed} where review_id <= {max_id} "
        "and review_text is not null)")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- paying once -------------------------------------------------------------------------------------

def test_build_pays_once_per_distinct_key_and_warm_rerun_pays_nothing(fresh_llm, simulator):
    project = fresh_llm
    started = time.monotonic()
    project.run("build", *NOT_FUNCTIONAL)
    cold_s = time.monotonic() - started
    seed = project.seed_table()
    d_text = distinct_texts(project)
    d_summary = project.scalar(
        f"select count(distinct 'Summarize this review of ' || product_name || ' in one short sentence: ' "
        f"|| review_text) from {seed} where review_text is not null")
    d_facts = project.scalar(
        f"select count(distinct 'Product: ' || product_name || E'\\n' || review_text) from {seed} "
        "where review_text is not null")
    # review_sentiment, reviews_enriched_incremental (sentiment + summary), review_topics: one key per
    # distinct text each; review_summary and review_facts: one per distinct prompt.
    expected = 4 * d_text + d_summary + d_facts
    # review_sentiment_guaranteed (sim_sure on review_id <= 120): its sim prompts are review_sentiment's
    # (same key, paid once); it adds only the oracle's (sim_large) requests, at most one per distinct
    # text, and one llm_results row (the cascade's answer) per distinct text. Its sample (60) is large
    # enough for a threshold to fit, so sim_large answers fewer texts than oracle-only would.
    d_sure = project.scalar(f"select count(distinct review_text) from {seed} where review_id <= 120")
    oracle = project.scalar(f'select count(*) from "{project.audit}".llm_calls '
                            "where model = 'sim_large' and not cached and error_kind is null")
    assert 0 < oracle < d_sure
    calibrations = project.query(f'select thresholds, measured_agreement, agreement_lower_bound '
                                 f'from "{project.audit}".llm_cascade_calibrations')
    assert len(calibrations) == 1
    # review_embeddings (50 reviews) and review_topic_catalog (24 topics): one embeddings request each
    embed = project.scalar(f'select count(*) from "{project.audit}".llm_calls where operation = \'embed\'')
    assert embed == 2
    # product_complaints (pg_llm.llm_aggregate): one request per node of its products' trees, each a
    # key of its own (decision 0037); every product of the first 200 reviews has an answer
    agg = project.scalar(f'select count(*) from "{project.audit}".llm_calls '
                         "where column_name = 'complaints' and not cached and error_kind is null")
    assert agg > project.scalar(f"select count(distinct product_id) from {seed} where review_id <= 200")
    assert project.scalar(f'select count(*) from "{project.schema}".product_complaints where complaints is null') == 0
    # review_product_match (pg_llm.semantic_join, plan auto): the classify rewrite, one multi-label
    # request per distinct text of the first 20 reviews (not 23 per text: the nested plan)
    match = project.scalar(f"select count(distinct review_text) from {seed} where review_id <= 20")
    assert project.scalar(f'select count(*) from "{project.audit}".llm_calls where node_id like %s and not cached',
                          ("%.review_product_match",)) == match
    # review_flags (first 60 reviews): a pg_llm.filter and a multi-label classify column, one request
    # and one llm_results key per distinct text and column
    flags = 2 * project.scalar(f"select count(distinct review_text) from {seed} where review_id <= 60")
    assert project.scalar(f'select count(*) from "{project.audit}".llm_calls where node_id like %s and not cached',
                          ("%.review_flags",)) == flags
    stats = simulator.stats()
    assert stats["requests"] == expected + oracle + embed + agg + match + flags
    assert project.scalar(f'select count(*) from "{project.audit}".llm_results') == \
        expected + d_sure + agg + match + flags
    assert project.scalar(f'select count(*) from "{project.schema}".review_sentiment_guaranteed '
                          "where sentiment is null and review_text is not null") == 0
    assert project.scalar(f'select count(*) from "{project.schema}".review_sentiment') == 1000
    labels = {r[0] for r in project.query(f'select distinct sentiment from "{project.schema}".review_sentiment')}
    assert labels - {None} <= set(LABELS)
    nulls = project.scalar(f'select count(*) from "{project.schema}".review_sentiment where sentiment is null')
    assert nulls == project.scalar(f"select count(*) from {seed} where review_text is null")

    simulator.reset()
    started = time.monotonic()
    project.run("build", *NOT_FUNCTIONAL)
    warm_s = time.monotonic() - started
    assert simulator.stats()["requests"] == 0
    runs = project.query(f'select requests, cache_hits from "{project.audit}".llm_runs order by started_at')
    assert len(runs) == 2 and runs[-1][0] == 0 and runs[-1][1] > 0
    print(f"\ncold build {cold_s:.1f}s ({expected} + {oracle} sim_large requests), warm build {warm_s:.1f}s "
          f"(0 requests); guaranteed cascade over {d_sure} texts: (thresholds, agreement, bound) {calibrations[0]}")


def test_parse_compile_docs_show_ls_make_no_requests(fresh_llm, simulator):
    project = fresh_llm
    project.run("parse")
    project.run("compile")
    project.run("compile", "-s", "review_topics")
    project.run("docs", "generate")
    out = project.run("show", "-s", "review_sentiment", "--limit", "3")
    assert "sentiment" in out.text
    project.run("ls")
    assert simulator.stats()["requests"] == 0
    assert project.scalar(f'select count(*) from "{project.audit}".llm_results') == 0
    compiled = next((project.path / "target" / "compiled").rglob("review_sentiment.sql")).read_text()
    assert f'"{project.audit}".llm_results' in compiled and "encode(sha256(" in compiled


def test_changed_prompt_or_model_requests_only_changed_keys(fresh_llm, simulator):
    project = fresh_llm
    seed = project.seed_table()
    project.run("run", "-s", "changing_sentiment")
    assert simulator.stats()["requests"] == distinct_texts(project)

    # New prompts for the 5-star reviews only.
    simulator.reset()
    prefix = "Five stars. "
    project.run("run", "-s", "changing_sentiment", "--vars", json.dumps({"five_star_prefix": prefix}))
    changed = {sha(prefix + r[0]) for r in project.query(
        f"select distinct review_text from {seed} where rating = 5 and review_text is not null")}
    stats = simulator.stats()
    assert stats["requests"] == len(changed)
    assert set(stats["by_prompt_sha256"]) == changed

    # Another model version: every key of this column changes.
    simulator.reset()
    project.run("run", "-s", "changing_sentiment", "--vars", json.dumps({"five_star_prefix": prefix}),
                LLM_MODEL="sim-2")
    prompts = project.scalar(
        f"select count(distinct case when rating = 5 then '{prefix}' || review_text else review_text end) "
        f"from {seed} where review_text is not null")
    assert simulator.stats()["requests"] == prompts

    # Back to the first version: all cached.
    simulator.reset()
    project.run("run", "-s", "changing_sentiment", "--vars", json.dumps({"five_star_prefix": prefix}))
    assert simulator.stats()["requests"] == 0


# -- errors ------------------------------------------------------------------------------------------

def _fault_keys(project) -> int:
    return project.scalar(
        f"select count(distinct review_text) from {project.seed_table()} "
        "where review_id <= 100 and mod(review_id, 10) = 0 and review_text is not null")


def test_on_error_null_keeps_dead_letters_and_retries_them_next_run(fresh_llm, simulator):
    project = fresh_llm
    out = project.run("run", "-s", "faulty_reviews")  # marker [[fault:400*1]]: fails once per prompt
    n_fault = _fault_keys(project)
    assert n_fault > 0
    assert f"{n_fault} of " in out.text and "key(s) failed" in out.text and "invalid_input" in out.text
    table = f'"{project.schema}".faulty_reviews'
    assert project.scalar(f"select count(*) from {table} where sentiment is null") == \
        project.scalar(f"select count(*) from {table} where mod(review_id, 10) = 0")
    dead = project.query(f'select error_kind, resolved_at from "{project.audit}".llm_errors')
    assert len(dead) == n_fault and all(kind == "invalid_input" and res is None for kind, res in dead)

    before = simulator.stats()["requests"]
    project.run("run", "-s", "faulty_reviews")
    assert simulator.stats()["requests"] - before == n_fault  # only the dead letters are retried
    assert project.scalar(f"select count(*) from {table} where sentiment is null") == 0
    assert project.scalar(f'select count(*) from "{project.audit}".llm_errors where resolved_at is null') == 0


def test_failures_are_dbt_warnings_or_errors_and_the_run_row_says_so(fresh_llm, simulator):
    project = fresh_llm
    # 100% failing (the endpoint is down): the model fails, it does not "complete successfully"
    out = project.run("run", "-s", "faulty_reviews", LLM_API_URL="http://127.0.0.1:9/v1", LLM_MAX_RETRIES="0",
                      expect=False)
    n_keys = project.scalar(f"select count(distinct review_text) from {project.seed_table()} "
                            "where review_id <= 100 and review_text is not null")
    assert f"{n_keys} of {n_keys} distinct key(s) (100%)" in out.text and "llm.max_error_rate (0.5)" in out.text
    assert project.query(f'select status from "{project.audit}".llm_runs') == [("failed",)]
    project.query(f'delete from "{project.audit}".llm_runs')
    always = json.dumps({"fault_marker": "[[fault:400]]"})  # 10% of the keys fail on every run
    out = project.run("run", "-s", "faulty_reviews", "--vars", always)
    failing = [w for w in out.warnings if "key(s) failed" in w]
    assert len(failing) == 1 and "llm.max_error_rate" in failing[0], out.warnings
    stats = [line for line in out.text.splitlines() if line.startswith("Done. PASS=")]
    print(f"\nwarning below max_error_rate: {failing[0][:100]}... | {stats}")
    assert project.query(f'select status from "{project.audit}".llm_runs') == [("partial",)]
    # dbt's own --warn-error turns that warning into an error
    out = project.run("--warn-error", "run", "-s", "faulty_reviews", "--vars", always, expect=False)
    assert "key(s) failed" in out.text
    # above llm.max_error_rate the model fails, naming the first error and the counts
    out = project.run("run", "-s", "faulty_reviews", "--vars", always, LLM_MAX_ERROR_RATE="0.05", expect=False)
    assert "llm.max_error_rate (0.05)" in out.text and "invalid_input" in out.text
    assert f"{_fault_keys(project)} of " in out.text
    statuses = [r[0] for r in project.query(f'select status from "{project.audit}".llm_runs order by started_at')]
    assert statuses[-1] == "failed", statuses


def test_on_error_fail_stops_the_model_with_the_first_error(fresh_llm, simulator):
    project = fresh_llm
    out = project.run("run", "-s", "faulty_reviews", "--vars",
                      json.dumps({"fault_marker": "[[fault:400]]", "on_error": "fail"}), expect=False)
    assert "on_error" in out.text and "invalid_input" in out.text
    assert "first error" in out.text.lower()


def test_on_error_literal_default_fills_failed_rows(fresh_llm, simulator):
    project = fresh_llm
    project.run("run", "-s", "faulty_reviews", "--vars",
                json.dumps({"fault_marker": "[[fault:400]]", "on_error": "unknown"}))
    table = f'"{project.schema}".faulty_reviews'
    rows = dict(project.query(
        f"select mod(review_id, 10) = 0, array_agg(distinct sentiment) from {table} group by 1"))
    assert rows[True] == ["unknown"]
    assert set(rows[False]) <= set(LABELS)


def test_percent_sign_in_source_sql(fresh_llm, simulator, tmp_path):
    project = fresh_llm
    model = project.path / "models" / "functional" / "percent_reviews.sql"
    model.write_text(
        "{{ pg_llm.llm_enrich(\"select review_id, review_text from \" ~ ref('product_reviews')"
        " ~ \" where review_text like '%great%'\", "
        "{'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'])}) }}\n")
    try:
        project.run("run", "-s", "percent_reviews")
        assert simulator.stats()["requests"] == distinct_texts(project, "review_text like '%great%'")
    finally:
        model.unlink()


# -- concurrency -------------------------------------------------------------------------------------

def test_two_concurrent_runs_pay_once_per_key(fresh_llm, simulator, tmp_path):
    project = fresh_llm
    other = f"func_b_{uuid.uuid4().hex[:8]}"
    project.extra_schemas.append(other)
    project.run("seed", DBT_SCHEMA=other)
    simulator.reset()
    simulator.configure(latency_ms=100)  # ~3 s of requests per run: the two runs overlap
    dbt = str(Path(sys.executable).parent / "dbt")
    procs = []
    try:
        for i, schema in enumerate((project.schema, other)):
            env = project.env(DBT_SCHEMA=schema, LLM_JOURNAL_DIR=str(tmp_path / f"journal_{i}"))
            procs.append(subprocess.Popen(
                [dbt, "run", "-s", "review_sentiment", "--project-dir", str(project.path),
                 "--profiles-dir", str(project.path), "--target-path", str(tmp_path / f"target_{i}"),
                 "--log-path", str(tmp_path / f"logs_{i}")],
                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        simulator.configure(latency_ms=0)
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-4000:]
    stats = simulator.stats()
    assert stats["requests"] == distinct_texts(project)
    assert max(stats["by_prompt_sha256"].values()) == 1
    runs = project.query(f'select requests from "{project.audit}".llm_runs')
    assert len(runs) == 2 and sum(r[0] for r in runs) == stats["requests"]
    print(f"\nconcurrent runs paid {sorted(r[0] for r in runs)} requests")
    assert min(r[0] for r in runs) > 0, "the runs did not overlap: nothing was shared"
    for schema in (project.schema, other):
        assert project.scalar(f'select count(*) from "{schema}".review_sentiment where sentiment is not null') \
            == project.scalar(f'select count(*) from "{schema}".product_reviews where review_text is not null')



def test_a_run_waiting_for_held_claims_says_who_and_takes_over_after_claim_timeout_s(fresh_llm, simulator):
    import psycopg2

    project = fresh_llm
    project.run("run", "-s", "review_sentiment")
    held = [r[0] for r in project.query(f'delete from "{project.audit}".llm_results where key in (select key from '
                                        f'"{project.audit}".llm_results order by key limit 5) returning key')]
    holder = psycopg2.connect(**project.pg.connect_kwargs(), application_name="stuck-etl")
    holder.autocommit = True
    try:
        with holder.cursor() as cur:  # another "run" claims 5 keys, then its connection idles
            cur.execute(f'insert into "{project.audit}".llm_claims (key, run_id, claim_token, backend_pid, node_id) '
                        "select k, 'idle-run', 'idle', pg_backend_pid(), 'model.x.idle' from unnest(%s::text[]) k",
                        (held,))
        simulator.reset()
        started = time.monotonic()
        out = project.run("run", "-s", "review_sentiment", LLM_CLAIM_TIMEOUT_S="2")
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert "waiting for 5 key(s) claimed by another run: 5 by run idle-run (node model.x.idle, stuck-etl) since " \
        in out.text, out.text[-3000:]
    assert "llm.claim_timeout_s=2s" in out.text and elapsed < 30
    # taken over and answered from the engine's journal (the first run paid for them): nothing paid twice
    assert simulator.stats()["requests"] == 0
    assert project.scalar(f'select count(*) from "{project.audit}".llm_results where key = any(%s)', (held,)) == 5
    assert project.scalar(f'select count(*) from "{project.audit}".llm_claims') == 0

# -- secrets -----------------------------------------------------------------------------------------

def _files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                if needle in path.read_bytes():
                    found.append(str(path))
    return found


def _tables_containing(project, schemas: list[str], needle: str) -> list[str]:
    found = []
    for schema, table in project.query(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema = any(%s) and table_type = 'BASE TABLE'", (schemas,)):
        if project.scalar(f'select count(*) from "{schema}"."{table}" t where strpos(t::text, %s) > 0', (needle,)):
            found.append(f"{schema}.{table}")
    return found


def test_api_keys_never_reach_artifacts_logs_audit_tables_or_errors(fresh_llm, simulator_factory, tmp_path):
    from dbt_pg_llm.simulator import SimulatorConfig

    project = fresh_llm
    key = "sk-test-SECRET-" + uuid.uuid4().hex
    wrong = "sk-test-WRONG-" + uuid.uuid4().hex
    guarded = simulator_factory(SimulatorConfig(api_key=key))
    texts = []
    texts.append(project.run("build", "-s", "review_sentiment", "review_topics",
                             LLM_API_URL=guarded.base_url, DBT_ENV_SECRET_LLM_API_KEY=key).text)
    assert guarded.stats()["requests"] > 0 and guarded.stats().get("unauthorized", 0) == 0
    texts.append(project.run("debug", LLM_API_URL=guarded.base_url, DBT_ENV_SECRET_LLM_API_KEY=key).text)
    # A rejected key: the run fails, and neither key shows up in the error.
    failed = project.run("run", "-s", "faulty_reviews", "--vars", json.dumps({"on_error": "fail"}),
                         LLM_API_URL=guarded.base_url, DBT_ENV_SECRET_LLM_API_KEY=wrong, expect=False)
    assert "api" in failed.text.lower()
    texts.append(failed.text)
    for secret in (key, wrong):
        assert not [t for t in texts if secret in t]
        assert _files_containing(project.path / "target", secret.encode()) == []
        assert _files_containing(project.path / "logs", secret.encode()) == []
        assert _files_containing(Path(project.llm_env["LLM_JOURNAL_DIR"]), secret.encode()) == []
        assert _tables_containing(project, [project.audit, project.schema], secret) == []


def test_dbt_debug_shows_pg_llm_and_no_secret(fresh_llm):
    project = fresh_llm
    key = "sk-test-DEBUG-" + uuid.uuid4().hex
    out = project.run("debug", DBT_ENV_SECRET_LLM_API_KEY=key)
    assert "adapter type: pg_llm" in out.text
    assert "llm_models: sim, sim_cascade, sim_large, sim_sure (default: sim)" in out.text
    assert "All checks passed" in out.text
    assert key not in out.text and "api_url" not in out.text


def test_invalid_llm_config_names_the_key_path(fresh_llm):
    project = fresh_llm
    out = project.run("parse", LLM_TEMPERATURE="3", expect=False)
    assert "llm.models.sim.temperature" in out.text
    assert "from 0 to 2" in out.text



def test_bad_schema_or_labels_fail_parse_and_compile_before_any_request(fresh_llm, simulator):
    """An invalid extract schema, a remote $ref or a non-text label: a compilation error naming the
    model, the column and the problem, from `dbt parse` on; nothing requested, nothing stored."""
    project = fresh_llm
    model = project.path / "models" / "functional" / "bad_input.sql"
    body = ("{{{{ pg_llm.llm_enrich(ref('product_reviews'), {{'{column}': {spec}}}) }}}}\n")
    cases = [
        ("facts", "pg_llm.extract('review_text', schema={'type': 'objekt'})",
         ["columns.facts.schema/type", "'objekt'"]),
        ("facts", "pg_llm.extract('review_text', schema={'properties': {'a': {'$ref': 'http://127.0.0.1:9/a.json'}}})",
         ["columns.facts.schema/properties/a/$ref", "refers outside this schema"]),
        ("mood", "pg_llm.classify('review_text', labels=['a', 3])", ["columns.mood.labels[1]: 3 is int"]),
    ]
    try:
        for i, (column, spec, expected) in enumerate(cases):
            model.write_text(body.format(column=column, spec=spec))
            commands = [("parse",), ("compile", "-s", "bad_input")] if i == 0 else [("parse",)]
            if i == 0:
                commands.append(("run", "-s", "bad_input"))
            for command in commands:
                out = project.run(*command, expect=False)
                assert "Compilation Error in model bad_input" in out.text, out.text[-3000:]
                for text in expected:
                    assert text in out.text, (command, out.text[-3000:])
    finally:
        model.unlink()
    assert simulator.stats()["requests"] == 0
    assert project.scalar("select count(*) from pg_namespace where nspname = %s", (project.audit,)) == 0

# -- Python and incremental models -------------------------------------------------------------------

def test_python_model_classifies_each_distinct_text_once(fresh_llm, simulator):
    project = fresh_llm
    project.run("build", "-s", "review_topics")
    assert simulator.stats()["requests"] == distinct_texts(project)
    table = f'"{project.schema}".review_topics'
    assert project.scalar(f"select count(*) from {table}") == \
        project.scalar(f"select count(*) from {project.seed_table()} where review_text is not null")
    topics = {r[0] for r in project.query(f"select distinct topic from {table}")}
    assert topics <= set(TOPICS)
    types = dict(project.query(
        "select column_name, data_type from information_schema.columns where table_schema = %s "
        "and table_name = 'review_topics'", (project.schema,)))
    assert types == {"review_id": "bigint", "product_id": "text", "rating": "bigint", "topic": "text"}
    simulator.reset()
    project.run("run", "-s", "review_topics")
    assert simulator.stats()["requests"] == 0


def test_incremental_model_requests_only_new_rows(fresh_llm, simulator):
    project = fresh_llm
    project.run("run", "-s", "reviews_enriched_incremental", "--full-refresh",
                "--vars", json.dumps({"max_review_id": 900}))
    table = f'"{project.schema}".reviews_enriched_incremental'
    assert project.scalar(f"select count(*) from {table}") == 900
    assert simulator.stats()["requests"] == 2 * distinct_texts(project, "review_id <= 900")

    simulator.reset()
    project.run("run", "-s", "reviews_enriched_incremental")
    new_texts = texts_new_after(project, 900)
    assert simulator.stats()["requests"] == 2 * new_texts  # sentiment + summary of the new texts only
    assert project.scalar(f"select count(*) from {table}") == 1000
    assert project.scalar(f"select count(*) from {table} where review_text is not null and sentiment is null") == 0


def test_python_incremental_model_classifies_only_new_rows(fresh_llm, simulator):
    project = fresh_llm
    seed = project.seed_table()
    project.run("run", "-s", "py_incremental_topics", "--full-refresh", "--vars", json.dumps({"max_review_id": 900}))
    table = f'"{project.schema}".py_incremental_topics'
    assert simulator.stats()["requests"] == distinct_texts(project, "review_id <= 900")
    simulator.reset()
    project.run("run", "-s", "py_incremental_topics")
    new_texts = texts_new_after(project, 900)
    assert simulator.stats()["requests"] == new_texts
    assert project.scalar(f"select count(*) from {table}") == \
        project.scalar(f"select count(*) from {seed} where review_text is not null")
    assert {r[0] for r in project.query(f"select distinct topic from {table}")} <= {"quality", "price", "other"}


def test_alerts_and_retention_on_a_real_run(fresh_llm, simulator):
    project = fresh_llm
    project.run("run", "-s", "faulty_reviews", "--vars", json.dumps({"fault_marker": "[[fault:400]]"}),
                LLM_ALERT_MAX_ERROR_RATE="0.05", LLM_ALERT_MIN_REQUESTS="5")
    alerts = project.query(f'select model, alert_type, severity, message from "{project.audit}".llm_alerts')
    assert [(m, t) for m, t, _, _ in alerts] == [("sim", "error_rate")]
    assert "above 5.0%" in alerts[0][3]
    # retention: an llm_calls row older than audit_retention_days is gone after the next real run
    project.query(f'insert into "{project.audit}".llm_calls (ts, run_id, model, operation, cached) '
                  "values (now() - interval '400 days', 'old-run', 'sim', 'classify', false)")
    project.run("compile", "-s", "faulty_reviews", LLM_AUDIT_RETENTION_DAYS="30")  # compile deletes nothing
    assert project.scalar(f"""select count(*) from "{project.audit}".llm_calls where run_id = 'old-run'""") == 1
    project.run("run", "-s", "faulty_reviews", LLM_AUDIT_RETENTION_DAYS="30")
    assert project.scalar(f"""select count(*) from "{project.audit}".llm_calls where run_id = 'old-run'""") == 0
    assert project.scalar(f'select count(*) from "{project.audit}".llm_calls') > 0


def test_cascade_strategy_model_from_the_profile(fresh_llm, simulator):
    project = fresh_llm
    project.run("run", "-s", "cascade_sentiment")
    texts = distinct_texts(project)
    by_model = dict(project.query(f'select model, count(*) from "{project.audit}".llm_results group by 1'))
    assert 0 < by_model.get("sim_large", 0) < texts and sum(by_model.values()) == texts, by_model
    # every row sim was unsure of (< 0.8) went to sim_large too; the more confident answer was kept
    escalated = project.scalar(f'select count(*) from "{project.audit}".llm_results '
                               "where model = 'sim_large' or confidence < 0.8")
    assert simulator.stats()["requests"] == texts + escalated
    labels = {r[0] for r in project.query(f'select distinct sentiment from "{project.schema}".cascade_sentiment')}
    assert labels - {None} <= set(LABELS)
    simulator.reset()
    project.run("run", "-s", "cascade_sentiment")
    assert simulator.stats()["requests"] == 0


# -- the spend cap -----------------------------------------------------------------------------------

@contextlib.contextmanager
def priced(simulator):
    """The simulator bills at the profile's prices for model `sim` while inside. (The cap tests set
    llm.max_error_rate to 1: about half of the keys are skipped, which that threshold would fail.)"""
    simulator.configure(cost_per_1k_input=0.00015, cost_per_1k_output=0.0006)
    try:
        yield
    finally:
        simulator.configure(cost_per_1k_input=0.0, cost_per_1k_output=0.0)


def test_max_cost_is_a_hard_cap_budget_dead_letters_and_a_rerun_fills_the_skipped_keys(fresh_llm, simulator):
    project = fresh_llm
    table, audit = f'"{project.schema}".budget_sentiment', f'"{project.audit}"'
    with priced(simulator):
        out = project.run("run", "-s", "budget_sentiment", LLM_MAX_COST_USD_PER_RUN="0.001", LLM_MAX_ERROR_RATE="1")
        ledger = simulator.stats()
        skipped = project.scalar(f"select count(*) from {audit}.llm_errors where error_kind = 'budget' "
                                 "and resolved_at is null")
        assert 0 < ledger["cost_usd"] <= 0.001 and skipped > 0
        assert project.scalar(f"select count(*) from {audit}.llm_errors where error_kind <> 'budget'") == 0
        assert f"{skipped} key(s) skipped for budget" in out.text and "max_cost_usd_per_run" in out.text
        assert f"{skipped} skipped for budget ($" in out.text  # the progress line
        assert project.scalar(f"select count(distinct review_text) from {table} where sentiment is null "
                              "and review_text is not null") == skipped
        assert project.scalar(f"select count(*) from {audit}.llm_results") == ledger["requests"]

        simulator.reset()
        project.run("run", "-s", "budget_sentiment", LLM_MAX_COST_USD_PER_RUN="1.0")
        assert simulator.stats()["requests"] == skipped  # exactly the skipped keys
        assert project.scalar(f"select count(*) from {table} where sentiment is null and review_text is not null") == 0
        assert project.scalar(f"select count(*) from {audit}.llm_errors where resolved_at is null") == 0


def test_on_budget_fail_fails_the_model_naming_cap_spent_and_skipped_keys(fresh_llm, simulator):
    project = fresh_llm
    with priced(simulator):
        out = project.run("run", "-s", "budget_sentiment", LLM_MAX_COST_USD_PER_RUN="0.001", LLM_MAX_ERROR_RATE="1", LLM_ON_BUDGET="fail",
                          expect=False)
        assert simulator.stats()["cost_usd"] <= 0.001
    skipped = project.scalar(f"select count(*) from \"{project.audit}\".llm_errors where error_kind = 'budget'")
    assert skipped > 0
    assert "on_budget" in out.text and "$0.001000 cap" in out.text and f"{skipped} key(s) skipped for budget" in out.text
    # a Python model too: the same cap, the same failure
    simulator.reset()
    with priced(simulator):
        out = project.run("run", "-s", "py_incremental_topics", "--full-refresh", "--vars",
                          json.dumps({"max_review_id": 300}), LLM_MAX_COST_USD_PER_RUN="0.0005", LLM_MAX_ERROR_RATE="1", LLM_ON_BUDGET="fail",
                          expect=False)
        assert 0 < simulator.stats()["cost_usd"] <= 0.0005
    assert "on_budget" in out.text and "$0.000500 cap" in out.text and "skipped for budget" in out.text
