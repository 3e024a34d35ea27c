"""Generic tests for LLM columns (issue 21 point 1): pg_llm.llm_filled, llm_confidence, llm_accuracy.

Real dbt (dbtRunner) on a copy of integration_tests/ against embedded Postgres and the simulator: a
partial run (the spend cap skips keys, or requests fail) must show as a failing / warning test of
`dbt build`, with the dead letters' error kinds in the stored failures; accuracy against golden
relations (labels, normalised text, per-field JSON, an LLM judge whose calls are audited).
"""
from __future__ import annotations

import uuid

import pytest
from dbt_harness import seeded_project

# Reviews 1..100 (a few have no text, review 30 too); every 10th text carries a fault marker: the
# simulator answers it with a 400 each time, so those 9 keys fail on every run and become dead letters.
FLAKY = """
{{{{ pg_llm.llm_enrich(
    "select review_id, review_text, case when mod(review_id, 10) = 0 then review_text || ' [[fault:400]]'"
    ~ " else review_text end as prompt from " ~ ref('product_reviews') ~ " where review_id <= 100",
    {{'sentiment': pg_llm.classify('prompt', labels=['positive', 'negative', 'neutral'])}}{extra}
) }}}}
"""

MODELS = {
    "flaky_sentiment.sql": FLAKY.format(extra=""),
    # the same 9 failures, but failed rows get a literal instead of NULL: still not filled
    "flaky_default.sql": FLAKY.format(extra=", on_error='unknown'"),
    # five reviews' facts (JSON) and summaries (free text)
    "few_facts.sql": """
{{ pg_llm.llm_enrich("select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 5",
    {'facts': pg_llm.extract('review_text', schema={'type': 'object', 'properties': {
        'product': {'type': 'string'}, 'would_recommend': {'type': 'boolean'}, 'stars': {'type': 'integer'}},
        'required': ['product', 'would_recommend', 'stars']}),
     'summary': pg_llm.complete('review_text', max_tokens=40)}
) }}
""",
    # golden facts: the model's own, with review 1's would_recommend flipped (1 field of 15 differs)
    "golden_facts.sql": """
select review_id, case when review_id = 1
         then facts || jsonb_build_object('would_recommend', not coalesce((facts->>'would_recommend')::boolean, false))
         else facts end as facts
from {{ ref('few_facts') }}
""",
    # golden summaries: review 2's in other case and punctuation (normalising settles it), review 3's
    # replaced by a different text (only a judge can settle it)
    "golden_summaries.sql": """
select review_id, case review_id when 2 then upper(summary) || ' !!'
                                 when 3 then 'An entirely different sentence about something else.'
                                 else summary end as summary
from {{ ref('few_facts') }}
""",
    # golden labels: the example's seed with review 4's label changed (23 of 24 agree)
    "golden_wrong.sql": """
select review_id, case when review_id = 4 then 'negative' else sentiment end as sentiment,
       upper(sentiment) || '.' as shouted
from {{ ref('golden_sentiment') }}
""",
    # reviews 1..24 classified like the example's review_sentiment (the same keys, so the same answers)
    "few_sentiment.sql": """
{{ pg_llm.llm_enrich("select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 24",
    {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'],
                                  instructions='Classify the overall sentiment of this product review.')}
) }}
""",
    # described by no yml: the clear-error test adds one
    "few_topics.sql": """
{{ pg_llm.llm_enrich("select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 3",
    {'topic': pg_llm.classify('review_text', labels=['quality', 'price'])}) }}
""",
    "column_tests.yml": """
version: 2
models:
  - name: flaky_sentiment
    columns:
      - name: sentiment
        data_tests:
          - pg_llm.llm_filled:
              name: filled_strict
          - pg_llm.llm_filled:
              name: filled_ten_percent
              arguments: {max_failed_share: 0.1}
          - pg_llm.llm_filled:
              name: filled_where
              config: {where: "review_id > 50"}
          - pg_llm.llm_filled:
              name: filled_warn
              config: {severity: warn}
          - pg_llm.llm_filled:
              name: filled_error_if
              config: {warn_if: ">0", error_if: ">20"}
          - pg_llm.llm_confidence:
              name: confidence_zero
              arguments: {min_confidence: 0.0}
          - pg_llm.llm_confidence:
              name: confidence_one
              arguments: {min_confidence: 1.0, max_share: 0.5}
  - name: flaky_default
    columns:
      - name: sentiment
        data_tests:
          - pg_llm.llm_filled:
              name: filled_default
  - name: few_facts
    columns:
      - name: facts
        data_tests:
          - pg_llm.llm_accuracy:
              name: facts_ninety
              arguments: {golden: ref('golden_facts'), key_column: review_id, min_accuracy: 0.9}
          - pg_llm.llm_accuracy:
              name: facts_all
              arguments: {golden: ref('golden_facts'), key_column: review_id}
      - name: summary
        data_tests:
          - pg_llm.llm_accuracy:
              name: summary_normalized
              arguments: {golden: ref('golden_summaries'), key_column: review_id, comparison: normalized}
          - pg_llm.llm_accuracy:
              name: summary_judge
              arguments: {golden: ref('golden_summaries'), key_column: review_id, comparison: judge, judge_model: sim}
  - name: few_sentiment
    columns:
      - name: sentiment
        data_tests:
          - pg_llm.llm_accuracy:
              name: labels_exact_wrong
              arguments: {golden: ref('golden_wrong'), key_column: review_id, min_accuracy: 0.99}
          - pg_llm.llm_accuracy:
              name: labels_normalized
              arguments: {golden: ref('golden_wrong'), key_column: review_id, golden_column: shouted, comparison: normalized}
          - pg_llm.llm_accuracy:
              name: labels_exact_shouted
              arguments: {golden: ref('golden_wrong'), key_column: review_id, golden_column: shouted, min_accuracy: 0.5}
""",
}


@pytest.fixture(scope="module")
def project(pg, simulator, tmp_path_factory):
    yield from seeded_project(tmp_path_factory, pg, simulator.base_url, MODELS)


def results(out) -> dict[str, tuple[str, int]]:
    """{node name: (status, failures)} of a dbt invocation."""
    return {r.node.name: (str(r.status), r.failures) for r in out.result.result.results}


def fresh_cache(project, tmp_path_factory) -> dict[str, str]:
    """A new audit schema and journal: the next run pays for everything again."""
    audit = f"llm_ct_{uuid.uuid4().hex[:8]}"
    project.extra_schemas.append(audit)
    return {"LLM_AUDIT_SCHEMA": audit, "LLM_JOURNAL_DIR": str(tmp_path_factory.mktemp("journal_ct"))}


def test_partial_run_fails_dbt_build_with_the_dead_letters_and_a_full_rerun_passes(project, tmp_path_factory):
    env = fresh_cache(project, tmp_path_factory)
    select = ("-s", "golden_sentiment", "review_sentiment", "review_summary")
    out = project.run("build", *select, "--store-failures", expect=False,
                      LLM_MAX_COST_USD_PER_RUN="0.001", LLM_MAX_ERROR_RATE="1", **env)
    res = results(out)
    audit, table = f'"{env["LLM_AUDIT_SCHEMA"]}"', f'"{project.schema}".review_sentiment'
    skipped_rows = project.scalar(f"select count(*) from {table} where review_text is not null and sentiment is null")
    assert skipped_rows > 0  # the cap really left rows empty
    filled = res["pg_llm_llm_filled_review_sentiment_sentiment"]
    assert filled == ("fail", skipped_rows)  # every unfilled row is a failure: an ERROR of dbt build
    assert res["pg_llm_llm_filled_review_summary_summary__0_01"][0] == "warn"  # severity: warn
    done = [line for line in out.text.splitlines() if "PASS=" in line][-1]
    print(f"partial build: {skipped_rows} of 1000 rows unfilled -> {done}")
    assert "ERROR=0" not in done and "WARN=0" not in done, done
    # store_failures: the failing rows, each with the dead letter of its key (the cap: kind 'budget')
    stored = project.query(
        f'select error_kind, count(*), min(failed_rows), min(total_rows) from "{project.schema}_dbt_test__audit".'
        "pg_llm_llm_filled_review_sentiment_sentiment group by 1")
    project.extra_schemas.append(f"{project.schema}_dbt_test__audit")
    assert stored == [("budget", skipped_rows, skipped_rows, 1000)]
    assert project.scalar(f"select count(distinct key) from {audit}.llm_errors where error_kind = 'budget'") > 0
    # the next run (no cap) fills the skipped keys: the same build is green
    out = project.run("build", *select, **env)
    assert all(status == "pass" or status == "success" for status, _ in results(out).values()), results(out)


@pytest.fixture(scope="module")
def flaky(project):
    out = project.run("build", "-s", "flaky_sentiment", "flaky_default", expect=False)
    return out, results(out)


def test_llm_filled_counts_failed_keys_not_null_inputs_and_honours_share_where_severity(project, flaky):
    out, res = flaky
    table = f'"{project.schema}".flaky_sentiment'
    failed = project.scalar(f"select count(*) from {table} where mod(review_id, 10) = 0 and review_text is not null")
    null_inputs = project.scalar(f"select count(*) from {table} where review_text is null")
    assert failed == 9 and null_inputs > 0  # rows without text (review 30 too) are NULL, and are not failures
    assert res["filled_strict"] == ("fail", failed)
    assert res["filled_ten_percent"] == ("pass", 0)  # 9 of 100 rows: not more than 0.1
    assert res["filled_where"] == ("fail", 5)  # only reviews 60, 70, 80, 90, 100
    assert res["filled_warn"] == ("warn", failed)
    assert res["filled_error_if"] == ("warn", failed)  # > 0 warns, > 20 would be an error
    assert res["filled_default"] == ("fail", failed)  # the on_error literal is not an answer either


def test_llm_filled_failing_rows_carry_the_error_kind_and_message(project, flaky):
    out, _ = flaky
    out = project.run("test", "-s", "filled_strict", "--store-failures", expect=False)
    project.extra_schemas.append(f"{project.schema}_dbt_test__audit")
    rows = project.query(f'select error_kind, error_message, failed_share from "{project.schema}_dbt_test__audit".filled_strict')
    assert len(rows) == 9
    assert {r[0] for r in rows} == {"invalid_input"}, rows
    assert all(r[1] and "400" in r[1] for r in rows) and {float(r[2]) for r in rows} == {0.09}


def test_llm_confidence_share_below_the_minimum(project, flaky):
    _, res = flaky
    assert res["confidence_zero"] == ("pass", 0)
    answered = project.scalar(f'select count(*) from "{project.schema}".flaky_sentiment '
                              "where sentiment is not null")
    # the simulator's label confidences are all below 1: every answered row is below, 100% > 50%
    assert res["confidence_one"] == ("fail", answered)


def test_not_an_llm_column_is_a_clear_error(project, tmp_path_factory):
    yml = project.path / "models" / "functional" / "bad_column.yml"
    yml.write_text("""
version: 2
models:
  - name: few_topics
    columns:
      - name: review_id
        data_tests: [pg_llm.llm_filled]
""")
    try:
        out = project.run("build", "-s", "few_topics", expect=False)
    finally:
        yml.unlink()
    assert "column 'review_id' of model.pg_llm_integration_tests.few_topics is not an LLM column" in out.text
    assert "LLM columns of this model: topic" in out.text


def test_llm_accuracy_labels_text_json_and_an_audited_judge(project, simulator):
    project.run("build", "-s", "golden_sentiment", "few_sentiment", "few_facts", "golden_wrong", "golden_facts",
                "golden_summaries", "--exclude", "test_name:llm_accuracy")
    # `dbt test` (not only build) runs the judge's requests
    out = project.run("test", "-s", "labels_exact_wrong", "labels_normalized", "labels_exact_shouted",
                      "facts_ninety", "facts_all", "summary_normalized", "summary_judge", expect=False)
    res = results(out)
    assert res["labels_exact_wrong"] == ("fail", 1)  # 23/24 < 0.99: the one disagreeing golden row
    assert res["labels_normalized"] == ("pass", 0)  # 'POSITIVE.' ~ 'positive' after normalising...
    assert res["labels_exact_shouted"] == ("fail", 24)  # ...but never exactly
    assert res["facts_ninety"] == ("pass", 0)  # per field: 14 of 15 fields agree
    assert res["facts_all"] == ("fail", 1)  # review 1, its would_recommend
    assert res["summary_normalized"] == ("fail", 1)  # review 3 differs, review 2 only in case
    # the judge: one distinct pair was left after normalising (review 3), asked once of 'sim' as a
    # classify through the engine, and audited in llm_calls under the test's node like any call
    audit = f'"{project.audit}"'
    calls = project.query(f"select model, operation, cost_usd, cached from {audit}.llm_calls "
                          "where node_id like 'test.%summary_judge%'")
    assert len(calls) == 1 and calls[0][1] == "classify" and float(calls[0][2]) > 0 and not calls[0][3], calls
    verdict = project.scalar(f"select output_text from {audit}.llm_results where node_id like 'test.%summary_judge%'")
    assert verdict in ("same", "different")
    assert res["summary_judge"] == (("pass", 0) if verdict == "same" else ("fail", 1))
    # again: the verdict is cached (one more llm_calls row, a cache hit, nothing paid); compile pays nothing
    project.run("test", "-s", "summary_judge", expect=None)
    project.run("compile", "-s", "summary_judge")
    again = project.query(f"select cached from {audit}.llm_calls where node_id like 'test.%summary_judge%' order by ts")
    assert again == [(False,), (True,)], again
