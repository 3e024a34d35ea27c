"""Issue 19.1 through dbt: pg_llm.embed(..., mode='batch') submits the missing texts as /v1/embeddings
lines of a provider batch in one run (rows NULL, nothing sent live), the next run collects them
(vectors in the column, one llm_calls row per billed line = the simulator's batch ledger), and a
warm rerun sends nothing and submits no batch."""
from __future__ import annotations

import pytest
from dbt_harness import one_model_project

from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

EMBEDDER = """
          embedder:   # embeddings; the model's batch policy is off, the column's mode='batch' switches it on
            provider: openai
            api_url: "{{ env_var('LLM_API_URL', 'http://127.0.0.1:8089/v1') }}"
            api_key: "{{ env_var('DBT_ENV_SECRET_LLM_API_KEY', 'sim-key') }}"
            model_version: text-embedding-3-small
            cost_per_1k_input_tokens: 0.02
            batch: {enabled: false, min_keys: 1}
"""
MODEL = ("{{ pg_llm.llm_enrich(\"select i as id, 'batch doc ' || i || ' about apples' as body "
         "from generate_series(1, 6) i\", {'emb': pg_llm.embed('body', model='embedder', dimensions=16, "
         "mode='batch')}) }}")


def test_embed_mode_batch_submits_then_the_next_run_collects_and_a_warm_rerun_is_free(pg, simulator_factory, tmp_path):
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=0.02))
    for project in one_model_project(tmp_path, pg, sim.base_url, "emb_batch", "docs_emb", MODEL, "embb"):
        profile = project.path / "profiles.yml"
        profile.write_text(profile.read_text().replace("        models:\n", "        models:" + EMBEDDER, 1))
        first = project.run("run")
        table = f'"{project.schema}".docs_emb'
        assert "sent in 1 provider batch(es)" in first.text
        assert sim.stats()["batches_created"] == 1 and sim.stats()["requests"] == 0
        assert project.scalar(f"select count(*) from {table} where emb is null") == 6
        project.run("run")  # the simulator ended the batch at once: collected by this run
        stats = sim.stats()
        assert project.scalar(f"select count(*) from {table} where cardinality(emb::real[]) = 16") == 6
        assert stats["batch_requests"] == 6 and stats["requests"] == 0 and stats["batches_created"] == 1
        calls = project.query(f'select count(*), sum(prompt_tokens), sum(cost_usd) from "{project.audit}".llm_calls '
                              "where operation = 'embed'")[0]
        assert calls[0] == 6 and calls[1] == stats["batch_prompt_tokens"]
        assert float(calls[2]) == pytest.approx(stats["batch_cost_usd"])
        project.run("run")
        assert sim.stats()["batches_created"] == 1 and sim.stats()["requests"] == 0
