"""`dbt run-operation pg_llm.evaluate` (issue 21.2): the example project's review_sentiment column
against its golden seed, through dbt (dbtRunner in-process, embedded Postgres, the simulator)."""
from __future__ import annotations

import pytest
from dbt_harness import seeded_project

pytestmark = pytest.mark.functional

ARGS = "{node: review_sentiment, column: sentiment, golden: golden_sentiment, key: review_id}"


@pytest.fixture(scope="module")
def project(pg, simulator, tmp_path_factory):
    yield from seeded_project(tmp_path_factory, pg, simulator.base_url, {})


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
