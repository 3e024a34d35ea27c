"""`dbt run-operation pg_llm.evaluate` (issue 21.2): the example project's review_sentiment column
against its golden seed, through dbt (dbtRunner in-process, embedded Postgres, the simulator)."""
from __future__ import annotations

import pytest
from dbt_harness import seeded_project

pytestmark = pytest.mark.functional

ARGS = "{node: review_sentiment, column: sentiment, golden: golden_sentiment, key: review_id}"


SURE_MODEL = """
{{ pg_llm.llm_enrich(
    "select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 120",
    {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'], model='sim_sure')}
) }}
"""


@pytest.fixture(scope="module")
def project(pg, simulator, tmp_path_factory):
    yield from seeded_project(tmp_path_factory, pg, simulator.base_url, {"sure_sentiment.sql": SURE_MODEL})


def test_evaluate_writes_accuracy_cost_latency_and_calibration(project, simulator):
    project.run("run", "-s", "review_sentiment")
    out = project.run("run-operation", "pg_llm.evaluate", "--args", ARGS)
    rows = project.query(f'select model, node_id, column_name, golden, rows_compared, accuracy, cost_per_row, '
                         f'calibration from "{project.audit}".llm_evaluations')
    assert len(rows) == 1, rows
    model, node_id, column, golden, compared, accuracy, cost_per_row, calibration = rows[0]
    assert (node_id.endswith(".review_sentiment"), column, golden) == (True, "sentiment", "golden_sentiment")
    # the same agreement, computed independently from the model's table and the seed
    expected = project.query(
        f'select count(*), avg((t.sentiment = g.sentiment)::int) from "{project.schema}".review_sentiment t '
        f'join "{project.schema}".golden_sentiment g using (review_id) where t.review_text is not null')[0]
    assert compared == expected[0] > 0
    assert accuracy == pytest.approx(float(expected[1]))
    assert cost_per_row >= 0 and sum(d["rows"] for d in calibration) == compared
    assert f"accuracy {accuracy:.1%}" in out.text
    # every golden prompt was answered by the run: evaluating asked the provider nothing new
    before = simulator.stats()["requests"]
    project.run("run-operation", "pg_llm.evaluate", "--args", ARGS)
    assert simulator.stats()["requests"] == before
    assert project.scalar(f'select count(*) from "{project.audit}".llm_evaluations') == 2


def test_evaluate_names_a_wrong_column_and_the_fix(project):
    bad = project.run("run-operation", "pg_llm.evaluate", "--args",
                      "{node: review_sentiment, column: mood, golden: golden_sentiment}", expect=False)
    assert "'mood' is not an LLM column of model 'review_sentiment'" in bad.text


def test_dbt_run_of_a_guaranteed_cascade_calibrates_once(project, simulator):
    """The example profile's sim_sure: the first `dbt run` samples 50 prompts, asks sim and sim_large,
    stores the thresholds; the rerun reuses them and asks nothing."""
    project.run("run", "-s", "sure_sentiment")
    rows = project.query(f'select strategy, sample_size, thresholds, measured_agreement, agreement_lower_bound '
                         f'from "{project.audit}".llm_cascade_calibrations')
    assert len(rows) == 1, rows
    strategy, sample_size, thresholds, measured, bound = rows[0]
    distinct = project.scalar(f'select count(distinct review_text) from "{project.schema}".product_reviews '
                              f'where review_id <= 120')
    assert strategy == "sim_sure" and sample_size == min(60, distinct) and len(thresholds) == 1
    assert bound >= 0.9 or thresholds == [1.01]
    # every answered row is the cascade's: sim where its confidence passed, sim_large otherwise
    models = dict(project.query(f'select model, count(*) from "{project.audit}".llm_results '
                                f'where node_id like \'%sure_sentiment\' group by 1'))
    assert sum(models.values()) == distinct and set(models) <= {"sim", "sim_large"}
    before = simulator.stats()["requests"]
    project.run("run", "-s", "sure_sentiment")
    assert simulator.stats()["requests"] == before
    assert project.scalar(f'select count(*) from "{project.audit}".llm_cascade_calibrations') == 1
