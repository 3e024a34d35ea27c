"""The example project against a real model server nobody here wrote: llama.cpp's ``llama-server``
with SmolLM2-135M-Instruct (issue 18). Built once per machine by ``tests/real_server/build.py``
(``.ci/run`` runs it first); without the build these tests skip, unless DBT_PG_LLM_REAL_SERVER=required.

One module-scoped server and project; few rows (the 135M model on one thread answers in ~0.1-1 s).
Asserted: ``dbt debug`` passes (the model name the server does not list is a warning), classify
values are labels, extract values are valid for the schema, tokens and cost in ``llm_calls`` equal
the server's own counters (``/metrics``), and a warm rerun makes 0 requests.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from dbt_harness import seeded_project  # the dbtRunner helper of the dbt tests

pytestmark = [pytest.mark.functional, pytest.mark.real_server]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "real_server"))
from build import locate  # noqa: E402
from server import LlamaServer  # noqa: E402

ROWS = 3  # reviews kept from the seed: every LLM column of the example project over them
LABELS = ["positive", "negative", "neutral"]
TOPICS = ["quality", "durability", "comfort", "performance", "price", "shipping", "other"]
PRICES = {"sim": (0.00015, 0.0006), "sim_large": (0.0025, 0.01)}  # the example profile's ($ per 1k tokens)
CASCADE = """
-- a cascade over the same server: sim first, sim_large when sim's confidence is below 0.8
{{ pg_llm.llm_enrich("select review_id, review_text from " ~ ref('product_reviews'),
    {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral'],
                                  instructions='Is this product review positive, negative or neutral?',
                                  model='sim_cascade')}) }}
"""
# the example's review_facts asks for an array of issues in 40 tokens: SmolLM2 fills the array until
# max_tokens (recorded: 8 of 8 truncated), so its rows are NULL dead letters; a flat schema it finishes
FLAT_FACTS = """
{{ pg_llm.llm_enrich("select review_id, product_name, review_text from " ~ ref('product_reviews'),
    {'facts': pg_llm.extract("'Product: ' || product_name || E'\\n' || review_text",
                             schema={'type': 'object', 'properties': {'product': {'type': 'string'},
                                     'would_recommend': {'type': 'boolean'}},
                                     'required': ['product', 'would_recommend']},
                             instructions='Name the product and say whether the reviewer recommends it.',
                             max_tokens=60)}) }}
"""
FIGURES: dict = {}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    files = locate()
    if files is None:
        message = "llama-server not built: run python3 tests/real_server/build.py (once, ~15-20 min)"
        if os.environ.get("DBT_PG_LLM_REAL_SERVER") == "required":
            pytest.fail(message)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with LlamaServer(files, log=log) as srv:
        srv.build_s = files.build_s
        yield srv


@pytest.fixture(scope="module")
def project(pg, llama, tmp_path_factory):
    gen = seeded_project(tmp_path_factory, pg, llama.base_url, {"real_cascade.sql": CASCADE,
                                                                 "real_flat_facts.sql": FLAT_FACTS})
    proj = next(gen)
    proj.query(f'delete from "{proj.schema}".product_reviews where review_id > %s', (ROWS,))
    # the model name is not one the server lists (it lists the .gguf): `dbt debug` must say so as a
    # warning; any name works for requests. No key: the server has none.
    proj.llm_env.update({"LLM_MODEL": "smollm2", "LLM_LARGE_MODEL": "smollm2-large", "LLM_MAX_ERROR_RATE": "1",
                         "LLM_MAX_RETRIES": "0", "DBT_THREADS": "1"})
    proj.base_env["DBT_ENV_SECRET_LLM_API_KEY"] = "no-key"
    yield proj
    for _ in gen:
        pass


def _paid(project) -> tuple[int, int, int, float]:
    return project.query(f"""select count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                                    coalesce(sum(cost_usd), 0)
                             from "{project.audit}".llm_calls where not cached""")[0]


def test_the_example_project_against_llama_server(project, llama):
    debug = project.run("debug")
    assert "pg_llm endpoint sim: WARNING" in debug.text and "1-token request to it was answered" in debug.text

    before = llama.metrics()
    started = time.monotonic()
    project.run("run")
    FIGURES["cold_run_s"] = round(time.monotonic() - started, 1)
    after = llama.metrics()

    schema = f'"{project.schema}"'
    sentiments = [r[0] for r in project.query(f"select sentiment from {schema}.review_sentiment")]
    cascade = [r[0] for r in project.query(f"select sentiment from {schema}.real_cascade")]
    topics = [r[0] for r in project.query(f"select topic from {schema}.review_topics")]
    incremental = project.query(f"select sentiment, summary from {schema}.reviews_enriched_incremental")
    facts = [r[0] for r in project.query(f"select facts from {schema}.review_facts")]
    flat = [r[0] for r in project.query(f"select facts from {schema}.real_flat_facts")]
    summaries = [r[0] for r in project.query(f"select summary from {schema}.review_summary")]
    assert len(sentiments) == len(cascade) == len(facts) == len(summaries) == ROWS
    # classify: every value is a label (NULL only for a failed key); a grammar keeps the small model
    # to the labels, so all answer
    for values, labels in ((sentiments, LABELS), (cascade, LABELS), (topics, TOPICS),
                           ([s for s, _ in incremental], LABELS)):
        assert set(values) <= set(labels), values
    labelled = sentiments + cascade + topics + [s for s, _ in incremental]
    FIGURES["labels_valid"] = f"{sum(v is not None for v in labelled)}/{len(labelled)}"
    assert all(v is not None for v in labelled), labelled
    # extract: every non-NULL value is valid for the schema
    from dbt_pg_llm.models.json_schema import local_validator

    schema_json = {"type": "object", "properties": {"product": {"type": "string"},
                                                    "issues": {"type": "array", "items": {"type": "string"}},
                                                    "would_recommend": {"type": "boolean"}},
                   "required": ["product", "issues", "would_recommend"]}
    validator = local_validator(schema_json)
    valid = [f for f in facts if f is not None]
    assert all(not list(validator.iter_errors(f)) for f in valid)
    flat_validator = local_validator({"type": "object", "properties": {"product": {"type": "string"},
                                      "would_recommend": {"type": "boolean"}}, "required": ["product",
                                                                                            "would_recommend"]})
    flat_valid = [f for f in flat if f is not None]
    assert all(not list(flat_validator.iter_errors(f)) for f in flat_valid)
    FIGURES["extract_schema_valid"] = {"review_facts (issues array, 40 tokens)": f"{len(valid)}/{len(facts)}",
                                       "flat schema, 60 tokens": f"{len(flat_valid)}/{len(flat)}"}
    # the failures say why, with what to raise (the array filled max_tokens)
    messages = [r[0] for r in project.query(f"""select message from "{project.audit}".llm_errors
                                                  where resolved_at is null""")]
    FIGURES["dead_letters"] = len(messages)
    assert all("raise max_tokens" in m for m in messages if "truncated" in m), messages
    assert all(isinstance(s, str) and s for s in summaries)

    # tokens and cost in the audit equal the server's own counters for the same requests
    requests, prompt, completion, cost = _paid(project)
    # the server counts the prompt tokens it evaluated and those its prompt cache already held
    # (a shared prefix); the usage it answers, and so the audit, counts both
    served_prompt = sum(after[k] - before[k] for k in ("llamacpp:prompt_tokens_total",
                                                       "llamacpp:prompt_tokens_cached_total"))
    served_completion = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    FIGURES.update(requests=requests, audit_tokens=(prompt, completion),
                   server_tokens=(int(served_prompt), int(served_completion)))
    assert completion == served_completion
    assert prompt == served_prompt
    # cost: each model's tokens at its profile prices (sim_large, the cascade's second model, costs more)
    for model, p_tokens, c_tokens, paid in project.query(
            f"""select model, sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
                from "{project.audit}".llm_calls where not cached group by 1"""):
        price_in, price_out = PRICES[model]
        assert float(paid) == pytest.approx((p_tokens * price_in + c_tokens * price_out) / 1000), model

    # warm rerun: nothing answered is requested again (failed keys are, by design: never cached). A
    # dead letter is not always one request (an embeddings request carries many texts; an aggregate's
    # failed chunk leaves levels above it unasked), so check the keys: no request of the rerun is for a
    # key that had an answer (a text or a vector) after the first run
    retried = len(messages)
    audit = f'"{project.audit}"'
    answered = {r[0] for r in project.query(f"select key from {audit}.llm_results where valid "
                                            f"union select key from {audit}.llm_embeddings")}
    project.run("run")
    FIGURES["warm_rerun_requests"] = _paid(project)[0] - requests
    rerun = [r[0] for r in project.query(f"""select input_hash from {audit}.llm_calls where not cached and run_id =
                                             (select run_id from {audit}.llm_runs order by started_at desc limit 1)""")]
    assert len(rerun) == FIGURES["warm_rerun_requests"]
    assert not set(rerun) & answered, sorted(set(rerun) & answered)
    assert bool(rerun) == bool(retried)
    if not retried:
        assert llama.metrics()["llamacpp:tokens_predicted_total"] == after["llamacpp:tokens_predicted_total"]
    print("real-server figures:", json.dumps({**FIGURES, "build_s": llama.build_s}))
