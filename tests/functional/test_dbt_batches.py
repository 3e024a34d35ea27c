"""Batch APIs through dbt (dbtRunner in-process): mode='batch' submits in one run and collects in the
next; pg_llm.batches lists open batches, pg_llm.cancel_batches cancels them."""
from __future__ import annotations

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

MODEL = """
{{ pg_llm.llm_enrich(
    "select i as id, 'batch review ' || i || ' " ~ var('tag', 'a') ~ " was ' || case when i % 2 = 0 then 'good' else 'bad' end"
    ~ " as body from generate_series(1, 12) i",
    {'sentiment': pg_llm.classify('body', labels=['positive', 'negative', 'neutral'])},
    mode='batch'
) }}
"""


@pytest.fixture
def batch_project(pg, simulator_factory, tmp_path):
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=0.15, cost_per_1k_output=0.6))
    for project in one_model_project(tmp_path, pg, sim.base_url, "batch_project", "batch_sentiment", MODEL,
                                     "batch", LLM_BATCH_MIN_KEYS="5"):
        yield project, sim


def test_batch_mode_submits_then_a_later_run_collects_and_operations_list_and_cancel(batch_project):
    project, sim = batch_project
    first = project.run("run", LLM_ON_ERROR="pending")  # rows waiting for a batch get the on_error default
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["requests"] == 0
    batch_id = project.scalar(f'select provider_batch_id from "{project.audit}".llm_batches')
    assert "wait in open provider batches" in first.text and batch_id in first.text
    assert project.scalar(f"select count(*) from \"{project.schema}\".batch_sentiment where sentiment = 'pending'") == 12

    listed = project.run("run-operation", "pg_llm.batches")
    assert "1 open provider batch(es)" in listed.text and batch_id in listed.text
    assert "12 keys" in listed.text and "built-in method" not in listed.text  # was r.keys: dict.keys

    second = project.run("run")  # the simulator ended the batch (no delay): collected, nothing resubmitted
    assert "collected provider batch(es)" in second.text
    assert project.scalar(f'select count(*) from "{project.schema}".batch_sentiment where sentiment is null') == 0
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["requests"] == 0 and stats["batch_requests"] == 12
    assert set(stats["batch_by_prompt_sha256"].values()) == {1}
    # store_prompts (default true): the collected answers keep their prompt, as normal ones do
    prompts = project.scalar(f'select count(prompt) from "{project.audit}".llm_results')
    assert prompts == 12, f"{prompts} of 12 collected answers kept their prompt"
    assert project.run("run-operation", "pg_llm.batches").text.count("0 open provider batch(es)") == 1

    # new prompts, a slow provider: cancel the open batch, the next run dead-letters and resubmits its keys
    sim.configure(batch_delay_s=3600)
    project.run("run", "--vars", '{"tag": "b"}')
    cancelled = project.run("run-operation", "pg_llm.cancel_batches")
    assert "cancelled batch_" in cancelled.text and ": cancelling" in cancelled.text
    project.run("run", "--vars", '{"tag": "b"}')
    assert project.scalar(f"select count(*) from \"{project.audit}\".llm_errors where message like '%cancelled%'") == 12
    assert project.scalar(f"select count(*) from \"{project.audit}\".llm_batches where status = 'cancelled'") == 1
    assert sim.stats()["batches_created"] == 3
