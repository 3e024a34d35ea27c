"""``max_cost_usd_per_run`` spans a `dbt retry` (decision 0025): a real `dbt run` that hits the cap
with ``on_budget: fail``, then `dbt retry` (and a retry of that retry): the simulator's ledger,
the truth of what was billed, stays under one cap across all of them."""
from __future__ import annotations

import json

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

CAP = 0.0005  # ~47 of the 300 keys fit at the profile's prices: the run stops for budget
MODEL = """
{{ pg_llm.llm_enrich(
    "select i as id, 'review ' || i || ': the kettle boils fast but the lid rattles' as body"
    ~ " from generate_series(1, 300) i",
    {'summary': pg_llm.complete('body', max_tokens=20)}
) }}
"""


@pytest.fixture
def retry_project(pg, simulator_factory, tmp_path):
    # the profile's prices for `sim`, so the ledger's cost is what the cap counts
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=0.00015, cost_per_1k_output=0.0006))
    for project in one_model_project(tmp_path, pg, sim.base_url, "retry_project", "retried_summaries", MODEL, "rt",
                                     LLM_MAX_COST_USD_PER_RUN=str(CAP), LLM_ON_BUDGET="fail",
                                     LLM_MAX_ERROR_RATE="1"):
        yield project, sim


def test_dbt_retry_continues_the_spend_of_the_run_it_retries(retry_project):
    project, sim = retry_project
    first = project.run("run", expect=False)
    paid_by_run = sim.stats()["cost_usd"]
    assert "on_budget" in first.text and 0 < paid_by_run <= CAP
    run_id = json.loads((project.path / "target" / "run_results.json").read_text())["metadata"]["invocation_id"]

    retried = project.run("retry", expect=False)  # the model failed for budget: dbt retry reruns it
    assert "retried_summaries" in retried.text
    # before: the retry got a fresh cap and paid about as much again (ledger ~2x the cap)
    assert sim.stats()["cost_usd"] <= CAP
    runs = dict(project.query(f'select run_id, cost_usd from "{project.audit}".llm_runs'))
    assert run_id in runs and len(runs) == 2  # each invocation keeps its own row; the cap spans them
    assert float(sum(runs.values())) <= CAP
    assert "cap spent" in retried.text and "skipped for budget" in retried.text

    project.run("retry", expect=False)  # a retry of the retry continues the first run too
    assert sim.stats()["cost_usd"] <= CAP
    chain = json.loads((project.path / "target" / "pg_llm_retry_chain.json").read_text())
    assert chain["continues"][-1] == run_id and len(chain["continues"]) == 2
