"""Hybrid inference strategies, with injected transports (each model answers its own way)."""
import json

import httpx
import pytest

from dbt_pg_llm import ConfigError, Engine, Model, ModelInput, ResponseFormat
from dbt_pg_llm.models.strategy import InferenceStrategy


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


# -- strategy models in the profile (settings) and in the Engine (StrategyModel) -------------------
import asyncio  # noqa: E402

from dbt_pg_llm import LlmSettings, ModelConfig, RegistryError, build_engine  # noqa: E402
from dbt_pg_llm.models.keys import fingerprint_of  # noqa: E402
from dbt_pg_llm.models.strategy_model import MEMBER_DEFAULT, StrategyConfig, StrategyModel  # noqa: E402
from dbt_pg_llm.models.tokens import LABEL_MARGIN_TOKENS  # noqa: E402

# answers by model_version: (content, first-token logprob); small is unsure of "neutral"
ANSWERS = {"v-small": {"good": ("positive", -0.05), "meh": ("neutral", -1.5)},
           "v-large": {"good": ("positive", -0.01), "meh": ("negative", -0.02)},
           "v-other": {"good": ("positive", -0.3), "meh": ("negative", -0.4)}}
TRI = ResponseFormat.one_of(["positive", "negative", "neutral"])


def real(version, **extra):
    return {"api_url": "http://x/v1", "model_version": version, "cost_per_1k_input_tokens": 1.0,
            "retry": {"max_retries": 0}, **extra}


def profile(**strategies):
    return {"default_model": "smart", "models": {
        "small": real("v-small"), "large": real("v-large", max_tokens=999), "other": real("v-other"),
        "smart": {"strategy": "cascade", "models": ["small", "large"], "min_confidence": 0.8},
        "panel": {"strategy": "vote", "models": ["small", "large", "other"]},
        "split": {"strategy": "route", "routes": {"classify": "small", "extract": "large"}, "default": "other"},
        **strategies}}


def ledger_transport(calls: list, delay_s: float = 0.0, sent: list | None = None):
    sent = [] if sent is None else sent

    async def handler(request):
        body = json.loads(request.content)
        prompt = body["messages"][-1]["content"]
        calls.append((body["model"], prompt))
        sent.append((body["model"], body["temperature"], body["max_tokens"]))
        if delay_s:
            await asyncio.sleep(delay_s)
        content, logprob = ANSWERS[body["model"]].get(prompt, ('{"city": "Oslo"}', -0.1))
        choice = {"message": {"content": content}, "finish_reason": "stop",
                  "logprobs": {"content": [{"token": content[:4], "logprob": logprob}]}}
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 10, "completion_tokens": 2}})
    return httpx.MockTransport(handler)


def test_settings_parse_strategies_next_to_models():
    s = LlmSettings.from_dict(profile())
    assert set(s.models) == {"small", "large", "other"} and all(isinstance(c, ModelConfig) for c in s.models.values())
    assert s.strategies["smart"] == InferenceStrategy("cascade", ("small", "large"), 0.8)
    assert s.strategies["panel"].kind == "vote"
    assert s.strategies["split"].routes == {"classify": "small", "extract": "large"}
    assert s.strategies["split"].members == ("other", "small", "large")
    assert s.model_for_default == "smart"
    cfg = s.config_for("smart")
    assert isinstance(cfg, StrategyConfig) and cfg.provider == "strategy:cascade" and cfg.fallbacks == ()
    assert (cfg.temperature, cfg.max_tokens) == MEMBER_DEFAULT  # each member's own, unless the request sets them
    assert (cfg.enabled, cfg.cost_per_1k_input_tokens, cfg.max_concurrency) == (True, 0.0, 16)
    assert json.loads(cfg.model_version) == {"strategy": "cascade", "min_confidence": 0.8, "models": [
        {"provider": "openai", "model_version": "v-small", "temperature": 0.0, "max_tokens": 256},
        {"provider": "openai", "model_version": "v-large", "temperature": 0.0, "max_tokens": 999}]}
    assert s.config_for("small") is s.models["small"]
    assert s.redacted()["strategies"]["smart"] == {"strategy": "cascade", "models": ["small", "large"]}
    with pytest.raises(RegistryError) as info:
        s.config_for("smrat")
    assert str(info.value) == ("unknown model 'smrat'; models configured under llm.models: "
                               "large, other, panel, small, smart, split")


def test_strategy_key_follows_members_and_parameters():
    inp = ModelInput("x", response_format=LABELS)

    def fp(data):
        s = LlmSettings.from_dict(data)
        return fingerprint_of(s.config_for("smart"), inp)

    base = fp(profile())
    assert base != fingerprint_of(LlmSettings.from_dict(profile()).config_for("small"), inp)
    changed_member = profile()
    changed_member["models"]["large"] = real("v-large-2")
    changed_conf = profile(smart={"strategy": "cascade", "models": ["small", "large"], "min_confidence": 0.9})
    reordered = profile(smart={"strategy": "cascade", "models": ["large", "small"], "min_confidence": 0.8})
    renamed = profile()
    renamed["models"]["tiny"] = renamed["models"].pop("small")
    renamed["models"]["smart"] = {"strategy": "cascade", "models": ["tiny", "large"], "min_confidence": 0.8}
    renamed["models"]["panel"]["models"][0] = renamed["models"]["split"]["routes"]["classify"] = "tiny"
    assert len({base, fp(changed_member), fp(changed_conf), fp(reordered)}) == 4
    assert fp(renamed) == base  # names are not part of a key; what answers is


def test_strategy_settings_problems_named_by_key_path():
    with pytest.raises(ConfigError) as info:
        LlmSettings.from_dict({"default_model": "smart", "models": {
            "small": {**real("v-small"), "fallbacks": ["smart"]}, "large": real("v-large"),
            "smart": {"strategy": "cascade", "models": ["small", "nope"], "min_confidence": 1.5},
            "deep": {"strategy": "vote", "models": ["smart", "large"], "min_confidence": 0.5},
            "solo": {"strategy": "vote", "models": ["small"]},
            "twice": {"strategy": "cascade", "models": ["small", "small"], "min_confidence": "high"},
            "bad": {"strategy": "escalate", "models": ["small"]},
            "typo": {"strategy": "cascade", "modles": ["small"], "routes": {"classify": "small"}},
            "split": {"strategy": "route", "routes": {"summarize": "small", "extract": "gone"}, "models": ["x"]},
        }})
    problems = info.value.problems
    expected = [
        "llm.models.smart.models: 'nope' is not a defined model (models: large, small)",
        "llm.models.smart.min_confidence: 1.5 must be between 0 and 1",
        "llm.models.deep.models: 'smart' is a strategy; strategies do not nest",
        "llm.models.deep.min_confidence: not used by strategy 'vote'",
        "llm.models.solo.models: a vote needs at least two models",
        "llm.models.twice.models: a model is listed twice",
        "llm.models.twice.min_confidence: 'high' must be a number from 0 to 1",
        "llm.models.bad.strategy: 'escalate' is unknown; use one of cascade, vote, route",
        "llm.models.typo.modles: unknown key; did you mean 'models'?",
        "llm.models.typo.routes: not used by strategy 'cascade'",
        "llm.models.typo.models: give at least one model name",
        "llm.models.split.routes.summarize: unknown task; use one of complete, classify, extract",
        "llm.models.split.routes.extract: 'gone' is not a defined model",
        "llm.models.split.default: missing",
        "llm.models.split.models: not used by strategy 'route'",
        "llm.models.small.fallbacks: 'smart' is a strategy; fall back to real models",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected), problems
    # a strategy with an invalid entry is still a defined name: no second, misleading problem
    with pytest.raises(ConfigError) as info:
        LlmSettings.from_dict({"default_model": "smart", "models": {
            "small": real("v-small"), "smart": {"strategy": "cascade", "models": ["nope"]}}})
    assert len(info.value.problems) == 1


def test_strategy_model_through_the_engine_caches_every_answer():
    calls, sent = [], []
    engine = build_engine(LlmSettings.from_dict(profile()), journal=False, transport=ledger_transport(calls, sent=sent))
    assert isinstance(engine.model("smart"), StrategyModel)
    good, meh = ModelInput("good", response_format=TRI), ModelInput("meh", response_format=TRI)
    out = engine.call("smart", good)  # small is sure: no escalation
    assert (out.value, out.model, out.cached) == ("positive", "small", False) and calls == [("v-small", "good")]
    out = engine.call("smart", meh)  # small is unsure: large answers
    assert (out.value, out.model) == ("negative", "large")
    assert calls[1:] == [("v-small", "meh"), ("v-large", "meh")]
    assert out.cost_usd == pytest.approx(2 * 10 / 1000) and out.tokens.prompt == 20
    # the strategy's answer and each member's are cached under their own keys
    assert len({engine.key_of("smart", meh), engine.key_of("small", meh), engine.key_of("large", meh)}) == 3
    again = engine.call("smart", meh)
    assert again.cached and again.value == "negative" and again.cost_usd == 0.0
    assert engine.call("small", meh).cached and engine.call("large", meh).cached
    assert len(calls) == 3
    # each member answered with its own settings, so its answers are shared with direct use of it
    # (a label answer is sent max_tokens = the longest label + a margin when that is smaller: tokens.py)
    # (structured_output auto sends labels as an enum: the bound includes its JSON wrapper, issue 18)
    from dbt_pg_llm.models.tokens import output_tokens_bound

    small, large = (output_tokens_bound(engine.model(m).config, good) for m in ("small", "large"))
    assert small == min(256, large) and small > len("positive") + LABEL_MARGIN_TOKENS
    assert sent == [("v-small", 0.0, small), ("v-small", 0.0, small), ("v-large", 0.0, large)]
    # a request's own settings go to every member (and make another key)
    engine.call("smart", ModelInput("meh", max_tokens=20, response_format=TRI))
    assert sent[3:] == [("v-small", 0.0, 20), ("v-large", 0.0, 20)]
    del calls[3:]
    # another strategy over the same members pays only for the member it has not asked yet
    vote = engine.call("panel", meh)
    assert vote.value == "negative" and vote.confidence == pytest.approx(2 / 3)
    assert calls[3:] == [("v-other", "meh")] and vote.cost_usd == pytest.approx(10 / 1000)
    assert vote.tokens.prompt == 10  # cached answers' tokens were not paid now
    # metrics: the members' requests once, the strategy's cache hit once
    total = engine.metrics.total()
    assert total.request_count == len(sent) == 6 and engine.metrics.for_model("smart").cache_hits == 1
    assert engine.metrics.for_model("smart").request_count == 0


def test_route_strategy_model_picks_by_response_format():
    calls = []
    engine = build_engine(LlmSettings.from_dict(profile()), journal=False, transport=ledger_transport(calls))
    assert engine.call("split", ModelInput("good", response_format=TRI)).model == "small"
    assert engine.call("split", ModelInput("where", response_format=ResponseFormat.json())).model == "large"
    assert engine.call("split", ModelInput("good")).model == "other"  # complete: the default
    assert [c[0] for c in calls] == ["v-small", "v-large", "v-other"]


def test_concurrent_strategy_calls_single_flight_without_deadlock():
    """Many concurrent calls of two strategies over the same members: no deadlock on the shared
    single-flight, and each member pays once per input."""
    calls = []
    engine = build_engine(LlmSettings.from_dict(profile()), journal=False,
                          transport=ledger_transport(calls, delay_s=0.02))

    async def many():
        inputs = [ModelInput(p, response_format=TRI) for p in ("good", "meh")]
        return await asyncio.wait_for(asyncio.gather(
            *(engine.acall(name, inp) for _ in range(10) for name in ("smart", "panel") for inp in inputs)), 10)

    outs = engine.loop.run(many())
    assert all(o.ok for o in outs) and len(outs) == 40
    assert sorted(calls) == sorted({(v, p) for v in ("v-small", "v-large", "v-other") for p in ("good", "meh")})
    assert sum(not o.cached for o in outs) == 4  # one computation per (strategy, input); the rest shared


def test_strategy_model_follows_member_changes_and_refuses_nesting():
    engine = build_engine(LlmSettings.from_dict(profile()), journal=False, transport=ledger_transport([]))
    before = engine.model("smart").config
    assert engine.model("smart").config is before  # computed once while members are unchanged
    engine.model("large").configure(model_version="v-large-2")
    assert "v-large-2" in engine.model("smart").config.model_version
    with pytest.raises(ConfigError, match="strategies do not nest"):
        StrategyModel("meta", InferenceStrategy.cascade(["smart", "small"]), engine)
    with pytest.raises(ConfigError, match="cannot use itself"):
        StrategyModel("loop", InferenceStrategy.cascade(["loop", "small"]), engine)
    with pytest.raises(RegistryError, match="unknown model 'ghost'"):
        StrategyModel("ghosts", InferenceStrategy.vote(["ghost", "small"]), engine)


# -- route by scores, skipping disabled models and open circuits --------------------------------------

def test_route_scores_pick_the_best_usable_model():
    calls = []
    engine = engine_with(model("small", "positive", calls=calls), model("large", "negative", calls=calls),
                         model("other", "positive", calls=calls))
    pick = InferenceStrategy.route({}, default="other",
                                   scores={"small": {"classify": 0.9, "complete": 0.2}, "large": {"classify": 0.8}})
    assert pick.candidates("classify") == ("small", "large", "other")
    assert pick.candidates("extract") == ("other",)
    assert pick.members == ("other", "small", "large")
    out = pick.call(engine, ModelInput("x", response_format=LABELS))
    assert out.model == "small" and calls == ["small"]

    # small disabled: the next best answers
    calls.clear()
    engine.registry.get("small").configure(enabled=False)
    assert pick.call(engine, ModelInput("x", response_format=LABELS)).model == "large" and calls == ["large"]

    # large's circuit open too: the default answers
    calls.clear()
    breaker = engine.registry.get("large").breaker
    for _ in range(breaker.failure_threshold):
        breaker.record_failure("api")
    assert breaker.state == "open"
    assert pick.call(engine, ModelInput("x", response_format=LABELS)).model == "other" and calls == ["other"]

    # a fixed route comes first, but is skipped as well when unusable
    calls.clear()
    routed = InferenceStrategy.route({"classify": "large"}, default="other", scores={"small": {"classify": 1}})
    assert routed.candidates("classify") == ("large", "small", "other")
    assert routed.call(engine, ModelInput("x", response_format=LABELS)).model == "other"


def test_route_scores_validation_and_key():
    from dbt_pg_llm import LlmSettings

    base = {"small": {"api_url": "http://x/v1", "model_version": "s"},
            "large": {"api_url": "http://x/v1", "model_version": "l"}}
    with pytest.raises(ConfigError) as err:
        LlmSettings.from_dict({"default_model": "pick", "models": {**base, "pick": {
            "strategy": "route", "default": "large",
            "scores": {"small": {"classify": -1, "summarize": 0.5}, "nope": {"classify": 1}, "large": 3}}}})
    text = str(err.value)
    assert "llm.models.pick.scores.small.classify: -1 must be a number >= 0" in text
    assert "llm.models.pick.scores.small.summarize: unknown task; use one of complete, classify, extract" in text
    assert "llm.models.pick.scores.nope: 'nope' is not a defined model" in text
    assert "llm.models.pick.scores.large: expected a mapping of task -> score" in text
    with pytest.raises(ConfigError, match=r"llm.models.smart.scores: not used by strategy 'cascade'"):
        LlmSettings.from_dict({"default_model": "smart", "models": {**base, "smart": {
            "strategy": "cascade", "models": ["small", "large"], "scores": {"small": {"classify": 1}}}}})

    def key(**entry):
        s = LlmSettings.from_dict({"default_model": "pick", "models": {**base, "pick": {"strategy": "route", **entry}}})
        return s.config_for("pick").model_version

    plain = key(routes={"classify": "small"}, default="large")
    assert "scores" not in plain  # the keys of routes without scores did not change
    scored = key(default="large", scores={"small": {"classify": 0.9}})
    assert scored != plain and scored != key(default="large", scores={"small": {"classify": 0.5}})
