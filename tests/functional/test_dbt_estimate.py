"""The README's estimate command, as written, on a project that tagged nothing (issue 17.2):
``dbt compile --select tag:llm --vars '{pg_llm_estimate: true}'`` estimates every model that
calls llm_enrich (the macro tags it ``llm``), a cascade's line prices its members, and what the run
then pays stays below the estimate (the simulator's ledger)."""
from __future__ import annotations

import re

import pytest
from dbt_harness import one_model_project

pytestmark = pytest.mark.functional

ROWS = 30
MODEL = """
{{ pg_llm.llm_enrich(
    "select i as id, 'review ' || i || ' was ' || case when i % 3 = 0 then 'good' else 'bad and slow' end"
    ~ " as body from generate_series(1, 30) i",
    {'sentiment': pg_llm.classify('body', labels=['positive', 'negative', 'neutral'], model='sim_cascade'),
     'summary': pg_llm.complete("'Summarize: ' || body", max_tokens=20)}
) }}
"""


@pytest.fixture
def est_project(pg, simulator, tmp_path):
    simulator.reset()
    yield from one_model_project(tmp_path, pg, simulator.base_url, "estimate_project", "untagged_reviews", MODEL,
                                 "est", LLM_TOKENIZER="simulator")


def test_the_documented_estimate_command_selects_untagged_llm_models_and_bounds_the_run(est_project, simulator):
    """Failed before: `--select tag:llm` selected nothing in a project that tagged no model, and
    the cascade's line said "0 output tokens at most, $0.0000"."""
    project = est_project
    out = project.run("compile", "--select", "tag:llm", "--vars", "{pg_llm_estimate: true}")
    lines = [line for line in out.text.splitlines() if "pg_llm estimate:" in line]
    assert len(lines) == 2, out.text[-3000:]
    cascade = next(line for line in lines if ".sentiment:" in line)
    assert "sim_cascade (sim + sim_large, each may be called)" in cascade
    assert f"{ROWS} of {ROWS} distinct keys uncached" in cascade
    assert " 0 output tokens" not in cascade and "$0.0000" not in cascade
    total = float(re.search(r"selection total so far \$([0-9.]+)", lines[-1]).group(1))
    assert simulator.stats()["requests"] == 0
    project.run("run")
    # the session simulator bills no prices: the run's cost is its tokens at the profile's prices (llm_calls)
    paid = float(project.scalar(f'select sum(cost_usd) from "{project.audit}".llm_calls'))
    assert simulator.stats()["requests"] > ROWS  # the cascade escalated some keys
    print(f"\n[estimate] dbt: estimate ${total:.4f}, run paid ${paid:.4f} ({total / paid:.2f}x); " + cascade)
    assert paid <= total + 1e-4  # printed to 4 decimals
