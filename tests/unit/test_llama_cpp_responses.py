"""What llama.cpp's llama-server answers, replayed (issue 18): recorded responses in
tests/fixtures/llama_cpp/ (tests/real_server/record.py) and its documented error bodies
(tools/server/server-common.cpp, common/json-schema-to-grammar.cpp), through an injected transport."""
from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
from test_model_calls import Script, answer, make_model

from dbt_pg_llm import ErrorKind, ModelInput, ResponseFormat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama_cpp"
LABELS = ["positive", "negative", "neutral"]
FACTS = {"type": "object", "properties": {"product": {"type": "string"}}, "required": ["product"]}


def exchanges(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.json").read_text())["exchanges"]


def test_exceed_context_size_error_is_prompt_too_long():
    recorded = exchanges("context_overflow")[0]
    assert recorded["status"] == 400 and recorded["response"]["error"]["type"] == "exceed_context_size_error"
    out = make_model(Script(httpx.Response(400, json=recorded["response"]))).call(ModelInput("long"))
    assert out.error_kind is ErrorKind.INVALID_INPUT and out.error_message.startswith("prompt too long for the model")
    assert "exceeds the available context size (2048 tokens)" in out.error_message and not out.recoverable


def test_a_schema_the_server_cannot_turn_into_a_grammar_falls_back_to_json_object_and_remembers():
    recorded = exchanges("schema_error")[0]  # "... JSON schema error at #/properties/n: cannot resolve $ref"
    assert recorded["status"] == 400

    def handler(request):
        rf = json.loads(request.content).get("response_format") or {}
        if rf.get("type") == "json_schema":
            return httpx.Response(400, json=recorded["response"])
        return answer('{"product": "kettle"}')

    script = Script(handler)
    model = make_model(script)
    fmt = ResponseFormat.json(FACTS)
    assert model.call(ModelInput("a", response_format=fmt)).value == {"product": "kettle"}
    assert model.call(ModelInput("b", response_format=fmt)).ok
    kinds = [(r.get("response_format") or {}).get("type") for r in script.requests]
    assert kinds == ["json_schema", "json_object", "json_object"]


def test_auto_sends_labels_as_an_enum_schema_and_steps_down_when_refused():
    """structured_output: auto sent labels as plain text, and SmolLM2 answered in sentences."""
    fmt = ResponseFormat.one_of(LABELS)
    script = Script(answer('{"label":"negative"}'))
    assert make_model(script).call(ModelInput("a", response_format=fmt)).value == "negative"
    sent = script.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["properties"]["label"]["enum"] == LABELS

    def refusing(request):
        if json.loads(request.content).get("response_format"):
            return httpx.Response(400, json={"error": {"message": "Unknown parameter: response_format"}})
        return answer("negative")

    script = Script(refusing)
    model = make_model(script)
    assert model.call(ModelInput("a", response_format=fmt)).value == "negative"
    assert model.call(ModelInput("b", response_format=fmt)).value == "negative"
    assert [("response_format" in r) for r in script.requests] == [True, False, False]  # learnt once


def test_label_confidence_is_aligned_against_the_logprob_tokens_not_the_content():
    """llama-server strips ```json fences from content but not from the logprobs: offsets into the
    content picked a fence token."""
    from dbt_pg_llm.models.providers.openai import label_logprob

    tokens = ["```", "json", "\n", '{"', "label", '":', ' "', "neg", "ative", '"}', "\n", "```"]
    lps = [-0.01, -4.15, -0.02, -0.3, -0.0, -0.0, -0.1, -1.06, -0.0, -0.0, -0.2, -0.0]
    items = [{"token": t, "logprob": lp} for t, lp in zip(tokens, lps)]
    # "negative" vs "neutral" share "ne": the choice is made in "neg"; "ative" is forced
    assert label_logprob(items, "negative", LABELS) == pytest.approx(-1.06)
    assert label_logprob(items, "negative", ["negative", "neutral", "negligible"]) == pytest.approx(-1.06)
    assert label_logprob(items, "positive", LABELS) is None  # not spelled: no confidence, not a wrong one
    response = httpx.Response(200, json={"choices": [{"message": {"content": '{"label": "negative"}'},
                                                      "finish_reason": "stop", "logprobs": {"content": items}}],
                                         "usage": {"prompt_tokens": 50, "completion_tokens": 12}})
    out = make_model(Script(response)).call(ModelInput("a", response_format=ResponseFormat.one_of(LABELS),
                                                       want_confidence=True))
    assert out.value == "negative" and out.confidence == pytest.approx(math.exp(-1.06))


def test_a_truncated_label_answer_says_what_to_raise():
    """max_tokens 8: the server spent it on the code fence and '{"label":' (recorded)."""
    recorded = exchanges("label_truncated")[0]
    assert recorded["response"]["choices"][0]["finish_reason"] == "length"
    out = make_model(Script(httpx.Response(200, json=recorded["response"]))).call(
        ModelInput("a", response_format=ResponseFormat.one_of(LABELS), max_tokens=8))
    assert out.error_kind is ErrorKind.INVALID_OUTPUT
    assert "truncated at max_tokens (max_tokens 8) after 8 output tokens: raise max_tokens" in out.error_message
    assert "code fence" in out.error_message


def _label_token_logprob(items: list[dict], label: str) -> float:
    """The logprob of the recorded stream's token holding the label's first character (each of
    these labels' first characters decides it: no other label starts the same way, but "ne")."""
    stream = "".join(item["token"] for item in items)
    at = stream.index(label, stream.index('"label"') + 7)
    if label in ("negative", "neutral"):
        at += 2  # "ne" is shared: the third character decides
    pos = 0
    for item in items:
        if pos <= at < pos + len(item["token"]):
            return item["logprob"]
        pos += len(item["token"])
    raise AssertionError(f"{label} not in {stream!r}")


def test_recorded_label_answers_are_labels_with_the_label_tokens_confidence():
    """40 answers of llama-server under json_schema: every one a label, and its confidence the
    probability of the token that spells it. Main stored a fence or JSON token's for 35 of 40
    (mean confidence 0.069 instead of 0.501)."""
    fmt = ResponseFormat.one_of(LABELS)
    recorded_all = exchanges("labels_json_schema")
    fenced = sum(r["response"]["choices"][0]["logprobs"]["content"][0]["token"] == "```" for r in recorded_all)
    assert fenced >= 30  # the fence the content does not show
    for recorded in recorded_all:
        response = recorded["response"]
        items = response["choices"][0]["logprobs"]["content"]
        out = make_model(Script(httpx.Response(200, json=response))).call(
            ModelInput("a", response_format=fmt, want_confidence=True))
        assert out.ok and out.value in LABELS
        assert out.confidence == pytest.approx(math.exp(_label_token_logprob(items, out.value)))


def test_recorded_plain_text_label_answers_are_sentences():
    """Why auto sends the enum: asked the same reviews in plain text, SmolLM2 answered 0 of 12 with a label."""
    fmt = ResponseFormat.one_of(LABELS)
    outs = [make_model(Script(httpx.Response(200, json=r["response"]))).call(ModelInput("a", response_format=fmt))
            for r in exchanges("labels_plain_text")]
    assert len(outs) == 12 and not any(o.ok for o in outs)
    assert all("not one of the labels" in o.error_message for o in outs)
