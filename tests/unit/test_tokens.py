"""tokens.py: token bounds that are upper bounds of what a provider bills, and tight (issue 17.2)."""
import json

import pytest

from dbt_pg_llm import ModelConfig, ModelInput, ResponseFormat, estimate_cost
from dbt_pg_llm.pg.spec import ColumnSpec
from dbt_pg_llm.models.providers import provider_for
from dbt_pg_llm.simulator import answers as sim_answers
from dbt_pg_llm.models.tokens import (LABEL_MARGIN_TOKENS, output_tokens_bound, packed_output_tokens_bound, prompt_tokens_bound,
                               token_counter)

AWKWARD = ["a", "tab\there", "café 日本語", "emoji 😀👍🏽", "x" * 1001, "  spaced  ", "\x00nul", "é" * 37,
           "<|endoftext|> is text", "1234567890" * 20]
REVIEW = ("Some good, some bad. On the plus side, it stays cool, but the prongs feel loose in the socket. "
          "Fine for the price.")
LABELS = ["positive", "negative", "neutral"]


def config(**over) -> ModelConfig:
    base = {"api_url": "http://127.0.0.1:9/v1", "model_version": "sim-small", "max_tokens": 200,
            "cost_per_1k_input_tokens": 0.00015, "cost_per_1k_output_tokens": 0.0006}
    return ModelConfig.from_dict({**base, **over}).validate()


def classify(prompt: str, labels=LABELS) -> ModelInput:
    return ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "x", "labels": labels, "model": "m",
                                 "instructions": "Classify the overall sentiment of this product review."}
                                ).model_input(prompt)


def simulator_bill(cfg: ModelConfig, inp: ModelInput, answer: str) -> float:
    contents = [c for c in (inp.system_message, inp.prompt) if c]
    return (sim_answers.prompt_tokens(contents) * cfg.cost_per_1k_input_tokens
            + sim_answers.completion_tokens(answer) * cfg.cost_per_1k_output_tokens) / 1000


@pytest.mark.parametrize("prompt", AWKWARD + [REVIEW])
def test_the_simulator_tokenizer_counts_exactly_what_the_simulator_bills(prompt):
    sim = config(tokenizer="simulator")
    for inp in (ModelInput(prompt, system_message="Answer briefly."), classify(prompt),
                ModelInput(prompt, response_format=ResponseFormat.json({"type": "object"}))):
        contents = [c for c in (inp.system_message, inp.prompt) if c]
        assert prompt_tokens_bound(sim, inp) == sim_answers.prompt_tokens(contents)
    # and bytes (auto, any server) stays a bound of the simulator too
    assert prompt_tokens_bound(config(), classify(prompt)) >= prompt_tokens_bound(sim, classify(prompt))


@pytest.mark.parametrize("prompt", AWKWARD + [REVIEW])
def test_openai_encodings_bound_the_exact_count_and_bytes_bound_every_bpe(prompt):
    bpe_openai = pytest.importorskip("bpe_openai")
    gpt = config(model_version="gpt-4o-mini")
    assert token_counter(gpt).name == "o200k_base"  # auto: OpenAI's model -> its encoding
    assert token_counter(config(model_version="gpt-4-turbo")).name == "cl100k_base"
    assert token_counter(config(provider="anthropic", model_version="claude-sonnet-4")).name == "bytes"
    inp = ModelInput(prompt, system_message="Answer briefly.")
    exact = sum(len(bpe_openai.get_encoding("o200k_base").encode_ordinary(m)) + 3 for m in (inp.system_message,
                                                                                           prompt)) + 3
    assert exact <= prompt_tokens_bound(gpt, inp) <= exact + 20  # OpenAI's documented overhead + a margin
    raw = len(prompt.encode("utf-8")) + len(inp.system_message.encode("utf-8"))
    assert prompt_tokens_bound(config(), inp) >= raw  # a byte-level BPE token covers >= 1 byte


def test_a_classify_request_is_bounded_and_sent_by_its_labels():
    """Failed before: a classify request reserved max_tokens (200) of output and 512 schema tokens of
    input that the simulator never bills: ~30x its cost; the provider was sent max_tokens 200."""
    # labels as plain text (structured_output: prompt; auto sends an enum since issue 18, tested below)
    sim = config(tokenizer="simulator", structured_output="prompt")
    inp = classify(REVIEW)
    assert output_tokens_bound(sim, inp) == max(sim_answers.completion_tokens(label) for label in LABELS)
    assert output_tokens_bound(config(structured_output="prompt"), inp) == len("positive") + LABEL_MARGIN_TOKENS
    assert output_tokens_bound(config(max_tokens=5), inp) == 5  # a smaller max_tokens still applies
    worst = estimate_cost(sim, inp)
    billed = max(simulator_bill(sim, inp, label) for label in LABELS)
    assert billed <= worst <= 1.01 * billed
    assert estimate_cost(config(structured_output="prompt"), inp) <= 6 * billed  # bytes (any server): ~4x English text, was ~30x
    # what the providers send is the same bound: a longer answer cannot be billed
    for provider in ("openai", "anthropic"):
        cfg = config(provider=provider, tokenizer="bytes")
        body, _ = provider_for(cfg, "m").build_body(inp.with_defaults(0.0, 200))
        assert body["max_tokens"] == output_tokens_bound(cfg, inp) < 200
    # free text and JSON keep max_tokens
    text = ModelInput(REVIEW, max_tokens=60)
    assert output_tokens_bound(sim, text) == 60
    body, _ = provider_for(sim, "m").build_body(text.with_defaults(0.0, 200))
    assert body["max_tokens"] == 60


def test_labels_sent_as_an_enum_or_a_tool_count_their_wrapper_and_schema():
    inp = classify(REVIEW, labels=['say "yes"', "no"])
    plain = output_tokens_bound(config(structured_output="prompt"), inp)
    assert output_tokens_bound(config(), inp) == output_tokens_bound(config(structured_output="json_schema"), inp)
    enum = output_tokens_bound(config(structured_output="json_schema"), inp)
    tool = output_tokens_bound(config(provider="anthropic", structured_output="tool"), inp)
    assert enum >= plain + len('{"label":""}') + 2  # the JSON string's escapes
    assert tool > enum
    answer = json.dumps({"label": 'say "yes"'})
    assert enum >= len(answer)
    # the enum schema is billed as prompt only when it is sent
    assert prompt_tokens_bound(config(structured_output="json_schema"), inp) > \
        prompt_tokens_bound(config(structured_output="prompt"), inp) + 300


def test_tokenizer_setting_is_checked():
    with pytest.raises(ValueError, match="tokenizer: 'gpt2' is not a tokenizer"):
        config(tokenizer="gpt2")
    with pytest.raises(ValueError, match="Anthropic's tokenizer is not public"):
        config(provider="anthropic", tokenizer="o200k_base")


@pytest.mark.parametrize("rows", [1, 2, 16, 50])
def test_a_packed_classify_request_is_bounded_by_its_labels_per_row(rows):
    """Failed before: a packed request of 16 classify rows reserved (and was sent) 16 x max_tokens."""
    labels = ["positive", "négatif", "neutral"]
    inp = classify(REVIEW, labels=labels).with_defaults(0.0, 200)
    sim, any_server = config(tokenizer="simulator"), config()
    for ascii_only in (True, False):  # a server may escape non-ASCII text or not
        for separators in ((",", ":"), (", ", ": ")):
            answer = json.dumps([labels[i % 3] for i in range(rows)], ensure_ascii=ascii_only, separators=separators)
            assert sim_answers.completion_tokens(answer) <= packed_output_tokens_bound(sim, inp, rows)
            assert len(answer.encode()) <= packed_output_tokens_bound(any_server, inp, rows)
    assert packed_output_tokens_bound(sim, inp, rows) <= 0.05 * 200 * rows + 1
    text = ModelInput(REVIEW, max_tokens=30)
    assert packed_output_tokens_bound(sim, text, rows) == 30 * rows  # free text: max_tokens per row
