"""Provider prompt caching end to end (decision 0028): real HTTP to the simulator, whose prompt
caches behave like OpenAI's (automatic prefixes) and Anthropic's (cache_control breakpoints) and
whose ledger bills cached reads and writes; the engine's costs, ``llm_calls`` / ``llm_results`` in
the embedded Postgres and the usage report must agree with that ledger."""
from __future__ import annotations

import json

import pytest

from dbt_pg_llm import BatchInput, BufferedSink, Engine, MemoryBackend, Model, ModelInput, ResponseFormat, ResultCache
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.pg.spec import CLASSIFY_PHRASE
from dbt_pg_llm.pg.usage_report import format_usage, usage_by_model
from dbt_pg_llm.models.runtime import shared_loop
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

PRICES = {"cost_per_1k_input_tokens": 1.0, "cost_per_1k_output_tokens": 2.0,
          "cost_per_1k_cached_input_tokens": 0.1, "cost_per_1k_cache_write_tokens": 1.25}
LABELS = ["positive", "negative", "neutral"]
# a long, shared rubric (~1,600 tokens): every row's request starts with it
INSTRUCTIONS = ("You grade customer reviews of kitchen appliances for a quality team. Read the whole review, "
                "weigh praise against complaints, ignore shipping issues, and answer with the overall tone. ") * 36
ROWS = 30


@pytest.fixture
def priced_sim(simulator_factory):
    return simulator_factory(SimulatorConfig(cost_per_1k_input=1.0, cost_per_1k_output=2.0,
                                             cost_per_1k_cached_input=0.1, cost_per_1k_cache_write=1.25))


def model(sim, provider: str) -> Model:
    version = "gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5"
    return Model("m", {"provider": provider, "api_url": sim.base_url, "model_version": version, "max_tokens": 16,
                       "max_concurrency": 4, "retry": {"max_retries": 0}, **PRICES})


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cost_with_cached_tokens_equals_the_ledger(priced_sim, provider):
    m = model(priced_sim, provider)
    system = INSTRUCTIONS + "\n\n" + CLASSIFY_PHRASE + json.dumps(LABELS)
    inputs = [ModelInput(f"review {i}: the kettle is {'great' if i % 2 else 'loud'}", system_message=system,
                         response_format=ResponseFormat.one_of(LABELS)) for i in range(ROWS)]
    try:
        outputs = m.batch_call(BatchInput(inputs)).outputs
    finally:
        shared_loop().run(m.aclose())  # the client lives on the shared loop: close it there
    assert all(o.ok for o in outputs), [o.error_message for o in outputs if not o.ok][:3]
    ledger = priced_sim.stats()
    cached = sum(o.tokens.cached for o in outputs)
    written = sum(o.tokens.cache_write for o in outputs)
    assert ledger["requests"] == ROWS
    assert (sum(o.tokens.prompt for o in outputs), cached, written) == (
        ledger["prompt_tokens"], ledger["cached_tokens"], ledger["cache_write_tokens"])
    assert cached > 0.8 * ledger["prompt_tokens"]  # the shared rubric is read from the cache on most rows
    if provider == "anthropic":
        assert 0 < written < ledger["prompt_tokens"] / ROWS * 2  # the prefix was written once (or twice in a race)
    else:
        assert written == 0  # OpenAI never bills writes
    paid = sum(o.cost_usd for o in outputs)
    assert paid == pytest.approx(ledger["cost_usd"], abs=1e-9)
    at_list_price = (ledger["prompt_tokens"] * 1.0 + ledger["completion_tokens"] * 2.0) / 1000
    assert paid < 0.5 * at_list_price  # what was over-reported before: every input token at the input price


def test_a_long_shared_prompt_shows_cached_tokens_and_the_saving_in_llm_calls_and_the_report(
        db, pg_conn, priced_sim, capsys):
    connect, schema, audit = db
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".reviews (id serial primary key, body text)')
        cur.executemany(f'insert into "{schema}".reviews (body) values (%s)',
                        [(f"review {i}: the kettle {'works' if i % 3 else 'leaks'}",) for i in range(ROWS)])
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS,
                                 "instructions": INSTRUCTIONS, "name": "tone"}, "m")
    engine = Engine([model(priced_sim, "openai")], cache=ResultCache(MemoryBackend()), sinks=[BufferedSink()])
    try:
        report = fill_column(connect, engine, f'"{schema}".reviews', spec, audit_schema=audit,
                             run=RunContext("run-pc", "model.p.tones"))
    finally:
        engine.close()
    assert (report.errors, report.requests_sent) == (0, ROWS)
    ledger = priced_sim.stats()
    with pg_conn.cursor() as cur:
        cur.execute(f"""select count(*), sum(prompt_tokens), sum(cached_tokens), sum(cache_write_tokens),
                               sum(cost_usd), sum(prompt_cache_saved_usd)
                        from "{audit}".llm_calls where not cached""")
        calls, prompt, cached, written, cost, saved = cur.fetchone()
        cur.execute(f'select sum(cached_tokens) from "{audit}".llm_results')
        (result_cached,) = cur.fetchone()
    assert (calls, prompt, cached, written) == (ROWS, ledger["prompt_tokens"], ledger["cached_tokens"], 0)
    assert cached > 0 and result_cached == cached
    assert float(cost) == pytest.approx(ledger["cost_usd"], abs=1e-9)
    assert float(saved) == pytest.approx(cached * (1.0 - 0.1) / 1000, abs=1e-9)

    (usage,) = usage_by_model(pg_conn, audit, days=1)
    assert (usage.cached_tokens, usage.prompt_tokens) == (cached, prompt)
    assert usage.prompt_cache_saved_usd == pytest.approx(float(saved), abs=1e-9)
    text = format_usage([usage], 1, audit)
    line = next(x for x in text.splitlines() if "provider prompt cache" in x)
    assert f"{cached:,} of {prompt:,} input tokens read from it ({cached / prompt:.1%})" in line
    assert f"saved ${float(saved):,.4f}" in line
    with capsys.disabled():  # the figures the issue asks for
        print(f"\n[prompt caching] {ROWS} rows, shared rubric: cached share {cached / prompt:.1%}, "
              f"paid ${float(cost):.4f} (ledger ${ledger['cost_usd']:.4f}), saved ${float(saved):.4f} "
              f"= {float(saved) / (float(cost) + float(saved)):.1%} of the cost at the input price")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_short_shared_prompt_is_not_cached_and_costs_the_list_price(priced_sim, provider):
    m = model(priced_sim, provider)
    system = "Grade the review. " + CLASSIFY_PHRASE + json.dumps(LABELS)  # far below 1,024 tokens
    inputs = [ModelInput(f"review {i}", system_message=system, response_format=ResponseFormat.one_of(LABELS))
              for i in range(5)]
    try:
        outputs = m.batch_call(BatchInput(inputs)).outputs
    finally:
        shared_loop().run(m.aclose())
    ledger = priced_sim.stats()
    assert all(o.ok for o in outputs) and (ledger["cached_tokens"], ledger["cache_write_tokens"]) == (0, 0)
    at_list_price = (ledger["prompt_tokens"] * 1.0 + ledger["completion_tokens"] * 2.0) / 1000
    assert sum(o.cost_usd for o in outputs) == pytest.approx(at_list_price, abs=1e-9) == ledger["cost_usd"]
