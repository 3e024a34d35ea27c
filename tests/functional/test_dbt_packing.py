"""Row packing through dbt: ``batch_size`` as a profile setting and as a macro argument.

160 short classify prompts go out 16 per request, give the labels of an unpacked run, the audit's
cost equals what the simulator charged, and a rerun sends nothing (packing is not in the key).
"""
from __future__ import annotations

import uuid

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

pytestmark = pytest.mark.functional

ROWS = 160
# The audit stores each cost at 10 decimal places (writers.money); a packed request's cost split over
# 16 rows is not, so the rows' sum may differ from the ledger by half a unit of the 10th place per row.
ROUNDING = ROWS * 0.5e-10
MODEL = """
{{ pg_llm.llm_enrich(
    "select i as id, 'review ' || i || ' was ' || case when i % 3 = 0 then 'good' when i % 3 = 1 then 'bad'"
    ~ " else 'fine' end as body from generate_series(1, 160) i",
    {'sentiment': pg_llm.classify('body', labels=['positive', 'negative', 'neutral'],
                                  batch_size=var('bs', none))}
) }}
"""


@pytest.fixture
def pack_project(pg, simulator, tmp_path):
    simulator.reset()
    simulator.configure(cost_per_1k_input=0.00015, cost_per_1k_output=0.0006)  # the profile's prices for sim
    try:
        yield from one_model_project(tmp_path, pg, simulator.base_url, "pack_project", "packed_reviews", MODEL, "pk")
    finally:
        simulator.configure(cost_per_1k_input=0.0, cost_per_1k_output=0.0)


def _fresh_run(project, simulator, tmp_path, *args: str, **env: str):
    """A dbt run on a new audit schema and journal (nothing cached) and a zeroed simulator ledger:
    (labels by id, simulator requests, simulator cost, the audit's llm_results cost)."""
    from dbt.adapters.pg_llm.engines import close_engines

    close_engines()
    simulator.reset()
    audit = f"llm_pk_{uuid.uuid4().hex[:8]}"
    project.llm_env.update(LLM_AUDIT_SCHEMA=audit, LLM_JOURNAL_DIR=str(tmp_path / audit))
    project.run("run", *args, **env)
    labels = project.query(f'select id, sentiment from "{project.schema}".packed_reviews order by id')
    stats = simulator.stats()
    cost = project.scalar(f'select coalesce(sum(cost_usd), 0) from "{audit}".llm_results')
    return labels, stats["requests"], stats["cost_usd"], float(cost)


def test_batch_size_packs_requests_with_the_same_labels_and_cost(pack_project, simulator, tmp_path):
    project = pack_project
    unpacked, requests_1, _, _ = _fresh_run(project, simulator, tmp_path)
    assert requests_1 == ROWS and len(unpacked) == ROWS
    assert {label for _, label in unpacked} == {"positive", "negative", "neutral"}

    # the macro argument
    packed, requests_16, ledger, audit_cost = _fresh_run(project, simulator, tmp_path, "--vars", "{bs: 16}")
    assert requests_16 <= ROWS / 12, requests_16
    assert packed == unpacked
    assert ledger > 0 and audit_cost == pytest.approx(ledger, rel=0, abs=ROUNDING)
    runs = project.scalar(f'select requests from "{project.audit}".llm_runs')
    assert runs == requests_16  # the HTTP requests really sent, not one per row
    calls = project.scalar(f'select coalesce(sum(cost_usd), 0) from "{project.audit}".llm_calls where not cached')
    assert float(calls) == pytest.approx(ledger, rel=0, abs=ROUNDING)
    simulator.reset()
    project.run("run", "--vars", "{bs: 16}")  # packing is not in the key: everything is cached
    assert simulator.stats()["requests"] == 0
    assert project.query(f'select id, sentiment from "{project.schema}".packed_reviews order by id') == unpacked

    # the profile setting (llm.models.sim.batch_size)
    by_profile, requests_p, ledger_p, audit_cost_p = _fresh_run(project, simulator, tmp_path, LLM_BATCH_SIZE="16")
    assert requests_p <= ROWS / 12 and by_profile == unpacked
    assert audit_cost_p == pytest.approx(ledger_p, rel=0, abs=ROUNDING)
