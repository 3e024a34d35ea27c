"""ResultRow.of_answer: the llm_results row of an answer, as the fill and the batch collector store it."""
from datetime import datetime, timedelta, timezone

from dbt_pg_llm import ModelOutput, TokenUsage
from dbt_pg_llm.pg.writers import ResultRow

COMMON = dict(model="m", model_version="v1", fingerprint="fp", cost_usd=0.25, run_id="r", node_id="n",
              column_name="c", prompt="p")


def test_a_text_answer_keeps_its_text_tokens_and_prompt_cache_counts():
    out = ModelOutput(text="positive", confidence=0.9, tokens=TokenUsage(100, 7, cached=64, cache_write=12),
                      truncated=True)
    row = ResultRow.of_answer("k", out, is_json=False, ttl=None, **COMMON)
    assert (row.output_text, row.output_json, row.confidence, row.truncated) == ("positive", None, 0.9, True)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.cache_write_tokens) == (100, 7, 64, 12)
    assert (row.model, row.model_version, row.fingerprint, row.cost_usd, row.expires_at) == ("m", "v1", "fp", 0.25, None)
    assert (row.run_id, row.node_id, row.column_name, row.prompt) == ("r", "n", "c", "p")


def test_a_json_answer_is_stored_as_compact_json_text_and_expires_after_the_ttl():
    out = ModelOutput(text='{"a": "é"}', value={"a": "é", "b": [1, 2]}, tokens=TokenUsage(5, 5))
    before = datetime.now(timezone.utc)
    row = ResultRow.of_answer("k", out, is_json=True, ttl=timedelta(days=2), **COMMON)
    assert row.output_text is None and row.output_json == '{"a":"é","b":[1,2]}'
    assert before + timedelta(days=2) <= row.expires_at <= datetime.now(timezone.utc) + timedelta(days=2)
