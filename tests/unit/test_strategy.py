"""Hybrid inference strategies, with injected transports (each model answers its own way)."""
import json
import math

import httpx
import pytest

from dbt_pg_llm import ConfigError, Engine, Model, ModelInput, ResponseFormat
from dbt_pg_llm.strategy import InferenceStrategy


def model(name, content, logprob=None, status=200, calls=None):
    def handler(request):
        if calls is not None:
            calls.append(name)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "down"}})
        choice = {"message": {"content": content}, "finish_reason": "stop"}
        if logprob is not None:
            choice["logprobs"] = {"content": [{"token": "x", "logprob": logprob}]}
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 2}})
    return Model(name, {"api_url": "http://x/v1", "model_version": name, "cost_per_1k_input_tokens": 1.0,
                        "retry": {"max_retries": 0}}, transport=httpx.MockTransport(handler))


LABELS = ResponseFormat.one_of(["positive", "negative"])


def engine_with(*models):
    engine = Engine()
    for m in models:
        engine.register(m)
    return engine


def test_cascade_escalates_only_when_unsure():
    calls = []
    sure = engine_with(model("small", "positive", logprob=-0.05, calls=calls), model("large", "negative", calls=calls))
    out = InferenceStrategy.cascade(["small", "large"], min_confidence=0.8).call(sure, ModelInput("x", response_format=LABELS))
    assert out.value == "positive" and calls == ["small"]

    calls.clear()
    unsure = engine_with(model("small", "positive", logprob=-1.5, calls=calls),
                         model("large", "negative", logprob=-0.01, calls=calls))
    out = InferenceStrategy.cascade(["small", "large"]).call(unsure, ModelInput("x", response_format=LABELS))
    assert out.value == "negative" and out.model == "large" and calls == ["small", "large"]
    assert out.cost_usd == pytest.approx(2 * 10 / 1000)  # both answers were paid for


def test_cascade_moves_on_after_a_failure():
    engine = engine_with(model("small", "", status=400), model("large", "negative", logprob=-0.01))
    out = InferenceStrategy.cascade(["small", "large"]).call(engine, ModelInput("x", response_format=LABELS))
    assert out.ok and out.value == "negative"


def test_vote_majority_and_agreement_confidence():
    engine = engine_with(model("a", "positive"), model("b", "negative"), model("c", "positive"))
    out = InferenceStrategy.vote(["a", "b", "c"]).call(engine, ModelInput("x", response_format=LABELS))
    assert out.value == "positive" and out.confidence == pytest.approx(2 / 3)
    assert out.cost_usd == pytest.approx(3 * 10 / 1000)


def test_vote_merges_json_field_by_field():
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}}
    engine = engine_with(model("a", json.dumps({"city": "Oslo", "n": 1})), model("b", json.dumps({"city": "Oslo", "n": 2})),
                         model("c", json.dumps({"city": "Rome", "n": 2, "extra": True})))
    out = InferenceStrategy.vote(["a", "b", "c"]).call(engine, ModelInput("x", response_format=ResponseFormat.json(schema)))
    assert out.value == {"city": "Oslo", "n": 2}


def test_route_by_task_type():
    calls = []
    engine = engine_with(model("small", "positive", calls=calls), model("large", "{}", calls=calls))
    strategy = InferenceStrategy.route({"classify": "small"}, default="large")
    assert strategy.call(engine, ModelInput("x", response_format=LABELS), task="classify").model == "small"
    assert strategy.call(engine, ModelInput("x"), task="extract").model == "large"


def test_strategy_validation():
    with pytest.raises(ConfigError, match="a vote needs at least two models"):
        InferenceStrategy.vote(["a"])
    with pytest.raises(ConfigError, match="min_confidence"):
        InferenceStrategy.cascade(["a", "b"], min_confidence=1.5)
