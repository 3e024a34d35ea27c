"""Operating it through dbt (issue 9): provenance and keep_keys, pg_llm.invalidate over both cache
layers, pg_llm.purge_audit, and the estimate mode — dbtRunner in-process, embedded Postgres and the
simulator's ledger, on a small project of its own (20 rows, two LLM columns)."""
from __future__ import annotations

import hashlib

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

pytestmark = pytest.mark.functional

ROWS = 20
NODE = "model.operate_project.keyed_reviews"
MODEL = """
{{ config(tags=['llm']) }}
{{ pg_llm.llm_enrich(
    "select i as id, 'review ' || i || ' " ~ var('tag', 'a') ~ " was ' || case when i % 2 = 0 then 'good' else 'bad' end"
    ~ " as body from generate_series(1, 20) i",
    {'sentiment': pg_llm.classify('body', labels=['positive', 'negative', 'neutral']),
     'summary': pg_llm.complete("'Summarize: ' || body", max_tokens=20)},
    keep_keys=true
) }}
"""


@pytest.fixture
def op_project(pg, simulator, tmp_path):
    simulator.reset()
    yield from one_model_project(tmp_path, pg, simulator.base_url, "operate_project", "keyed_reviews", MODEL, "op")


def _requests(simulator) -> int:
    return simulator.stats()["requests"]


def test_llm_results_record_provenance_and_keep_keys_explains_each_row(op_project, simulator):
    project = op_project
    project.run("run")
    assert _requests(simulator) == 2 * ROWS
    table, audit = f'"{project.schema}".keyed_reviews', f'"{project.audit}"'
    rows = project.query(f"select node_id, column_name, model, model_version, fingerprint is not null, "
                         f"run_id is not null, prompt from {audit}.llm_results order by column_name, prompt")
    assert len(rows) == 2 * ROWS
    version = project.env()["LLM_MODEL"]
    assert {r[:6] for r in rows} == {(NODE, "sentiment", "sim", version, True, True),
                                     (NODE, "summary", "sim", version, True, True)}
    # the key columns explain every value: its prompt, model and answer, joined on the key
    explained = project.query(f"""
        select count(*) filter (where s.prompt = t.body and s.output_text = t.sentiment),
               count(*) filter (where m.prompt = 'Summarize: ' || t.body and m.output_text = t.summary)
        from {table} t join {audit}.llm_results s on s.key = t.sentiment__llm_key
                       join {audit}.llm_results m on m.key = t.summary__llm_key""")
    assert explained == [(ROWS, ROWS)]
    key = project.scalar(f"select sentiment__llm_key from {table} where id = 1")
    body = project.scalar(f"select body from {table} where id = 1")
    fingerprint = project.scalar(f"select fingerprint from {audit}.llm_results where key = %s", (key,))
    assert key == hashlib.sha256(f"{fingerprint}\n{body}".encode()).hexdigest()


def test_store_prompts_false_keeps_only_the_hash(op_project, simulator):
    project = op_project
    project.run("run", LLM_STORE_PROMPTS="False")
    audit = f'"{project.audit}"'
    assert project.query(f"select count(*), count(prompt), count(node_id) from {audit}.llm_results") == \
        [(2 * ROWS, 0, 2 * ROWS)]


def test_invalidate_re_requests_exactly_the_invalidated_keys_in_both_layers(op_project, simulator):
    project = op_project
    audit = f'"{project.audit}"'
    project.run("run")
    # what users did before: deleting rows from llm_results is undone by the journal, unpaid
    project.query(f"delete from {audit}.llm_results where column_name = 'sentiment' and prompt like '%good'")
    simulator.reset()
    project.run("run")
    assert _requests(simulator) == 0

    refused = project.run("run-operation", "pg_llm.invalidate", expect=False)
    assert "no filter given" in refused.text and "all: true" in refused.text

    out = project.run("run-operation", "pg_llm.invalidate", "--args",
                      "{node: keyed_reviews, column: sentiment, where: \"r.prompt like '%good'\"}")
    assert "invalidated 10 cached answer(s)" in out.text and "and 10 in the local journal" in out.text
    assert project.scalar(f"select count(*) from {audit}.llm_results where not valid") == 10
    simulator.reset()
    project.run("run")
    assert _requests(simulator) == 10
    assert project.scalar(f"select count(*) from {audit}.llm_results where not valid or invalidated_at "
                          "is not null") == 0

    # a misspelt column matches nothing: the line says what exists instead of a bare "invalidated 0"
    miss = project.run("run-operation", "pg_llm.invalidate", "--args", "{node: keyed_reviews, column: summry}")
    assert "invalidated 0 cached answer(s)" in miss.text and "Nothing matched {node: 'keyed_reviews', column: " \
        "'summry'}" in miss.text
    assert f"node {NODE} column summary model sim: {ROWS}" in miss.text
    assert f"node {NODE} column sentiment model sim: {ROWS}" in miss.text

    project.run("run-operation", "pg_llm.invalidate", "--args", "{model: sim, column: summary}")
    simulator.reset()
    project.run("run")
    assert _requests(simulator) == ROWS


def test_purge_audit_deletes_old_audit_rows_but_never_valid_answers(op_project, simulator):
    project = op_project
    audit = f'"{project.audit}"'
    project.run("run")
    project.run("run-operation", "pg_llm.invalidate", "--args", "{column: summary}")
    bad = project.run("run-operation", "pg_llm.purge_audit", "--args", "{older_than_days: -1}", expect=False)
    assert "pg_llm.purge_audit.older_than_days" in bad.text
    assert project.scalar(f"select count(*) from {audit}.llm_calls") > 0
    out = project.run("run-operation", "pg_llm.purge_audit", "--args", "{older_than_days: 0}")
    assert "purged audit rows" in out.text
    assert project.query(f"select (select count(*) from {audit}.llm_calls), (select count(*) from {audit}.llm_runs),"
                         f" (select count(*) from {audit}.llm_results), "
                         f"(select count(*) from {audit}.llm_results where valid)") == [(0, 0, ROWS, ROWS)]
    simulator.reset()
    project.run("run")
    assert _requests(simulator) == ROWS  # the purged (invalid) summaries, nothing else
    everything = project.run("run-operation", "pg_llm.invalidate", "--args", "{all: true}")
    assert f"invalidated {2 * ROWS} cached answer(s)" in everything.text


def _table_state(project) -> list[tuple]:
    """The catalog of the model schema plus a hash of every row of the model's table."""
    return project.query(f"""
        select c.relname, c.oid::bigint, c.relfilenode::bigint,
               (select md5(string_agg(t::text, ',' order by t.id)) from "{project.schema}".keyed_reviews t)
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s order by c.relname""", (project.schema,))


def test_estimate_mode_prices_uncached_keys_with_the_budget_estimator_and_changes_nothing(op_project, simulator):
    from dbt_pg_llm.pg.spec import ColumnSpec
    from dbt_pg_llm.models.settings import LlmSettings
    from dbt_pg_llm.models.spend import estimate_cost

    project = op_project
    project.run("run")
    before = _table_state(project)
    simulator.reset()
    # a new tag changes every prompt: every key is uncached
    out = project.run("compile", "--select", "tag:llm", "--vars", "{pg_llm_estimate: true, tag: b}",
                      LLM_MAX_COST_USD_PER_RUN="0.001")
    lines = [line for line in out.text.splitlines() if "pg_llm estimate:" in line]
    assert len(lines) == 2, out.text[-3000:]
    assert all(f"{ROWS} of {ROWS} distinct keys uncached" in line for line in lines)
    # the same estimator as the budget's hard cap
    config = LlmSettings.from_dict({"models": {"sim": {"provider": "openai", "api_url": "http://x/v1",
                                                       "model_version": "any", "max_tokens": 200,
                                                       "cost_per_1k_input_tokens": 0.00015,
                                                       "cost_per_1k_output_tokens": 0.0006}}}).models["sim"]
    bodies = [f"review {i} b was {'good' if i % 2 == 0 else 'bad'}" for i in range(1, ROWS + 1)]
    classify = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "model": "sim",
                                     "labels": ["positive", "negative", "neutral"]})
    complete = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "x", "model": "sim", "max_tokens": 20})
    expected = sum(estimate_cost(config, classify.model_input(b)) for b in bodies) \
        + sum(estimate_cost(config, complete.model_input("Summarize: " + b)) for b in bodies)
    assert f"selection total so far ${expected:.4f} of llm.max_cost_usd_per_run $0.001 (EXCEEDED" in lines[-1]
    assert _requests(simulator) == 0
    assert _table_state(project) == before

    # a run in estimate mode estimates, then stops the model before it touches its table
    ran = project.run("run", "--vars", "{pg_llm_estimate: true, tag: c}", expect=False)
    assert "estimate mode" in ran.text and "left unchanged" in ran.text
    assert _requests(simulator) == 0
    assert _table_state(project) == before

    # half the keys cached: only the other half is counted
    project.run("run", "--vars", "{tag: b}")
    simulator.reset()
    partly = project.run("compile", "--vars", "{pg_llm_estimate: true, tag: b}")
    assert partly.text.count(f"0 of {ROWS} distinct keys uncached") == 2
    assert _requests(simulator) == 0


def _journal_cli(*args: str, project=None) -> str:
    """``python -m dbt_pg_llm journal ...``; with ``project``, the journal is found through its profile."""
    import os
    import subprocess
    import sys

    where = ["--project-dir", str(project.path), "--profiles-dir", str(project.path)] if project else []
    env = {**os.environ, **(project.env() if project else {})}
    done = subprocess.run([sys.executable, "-m", "dbt_pg_llm", "journal", *args, *where], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_journal_stats_and_prune_after_invalidate(op_project, simulator):
    project = op_project
    journal = project.llm_env["LLM_JOURNAL_DIR"]
    project.run("run")
    project.run("run-operation", "pg_llm.invalidate", "--args", "{column: sentiment}")
    stats = _journal_cli("--stats", project=project)  # llm.journal_dir of the profile
    assert journal in stats
    assert f"{2 * ROWS} entries ({ROWS} valid, {ROWS} invalidated, 0 expired)" in stats
    assert " MB, oldest 20" in stats
    pruned = _journal_cli("--prune", "--journal-dir", journal)
    assert f"pruned {ROWS} entries" in pruned and f"{ROWS} entries ({ROWS} valid" in pruned
    everything = _journal_cli("--prune", "--older-than-days", "0", "--journal-dir", journal)
    assert f"pruned {ROWS} entries" in everything and "0 entries" in everything
