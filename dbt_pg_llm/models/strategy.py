"""Hybrid inference: serve one call from several models.

    InferenceStrategy.cascade(["small", "large"], min_confidence=0.8)
        ask the cheap model first; escalate to the next only when the answer failed or its
        confidence is below ``min_confidence`` (answers without a confidence are accepted).
    InferenceStrategy.cascade(["small", "large"], target_accuracy=0.9, failure_probability=0.05)
        a guaranteed cascade (issue 21.3, guarantee.py, decision 0033): the thresholds of the cheaper
        models are chosen on a sample of keys also sent to the last (oracle) model
        (``cascade_calibration.calibrate``) so that, with probability 1 - failure_probability, the
        cascade agrees with the oracle on at least target_accuracy of the keys. Until calibrated,
        every key is asked of the oracle only (the target holds trivially).
    InferenceStrategy.vote(["a", "b", "c"])
        ask all models in parallel; the most common value wins (ties: the higher summed
        confidence); JSON objects are merged field by field, each field by majority.
    InferenceStrategy.route({"classify": "small", "extract": "large"}, default="large")
        pick the model by task type (the column kind: complete / classify / extract).
    InferenceStrategy.route({}, default="large", scores={"small": {"classify": 0.9}, "large": {"classify": 0.8}})
        pick among the models suited to the task (a score > 0 for it), highest score first; at call
        time, models that are disabled (``enabled: false``) or whose circuit is open are skipped.
        Candidates, in order: ``routes[task]``, the scored models by score, ``default``; the first
        usable one answers (if none is usable, the first is asked and fails fast, as a model would).

A profile names a strategy like a model (``settings.py`` parses it with ``from_dict``)::

    models:
      small: {provider: openai, api_url: ..., model_version: gpt-4o-mini}
      large: {provider: openai, api_url: ..., model_version: gpt-4o}
      smart: {strategy: cascade, models: [small, large], min_confidence: 0.8}
      sure:  {strategy: cascade, models: [small, large], target_accuracy: 0.9, failure_probability: 0.05,
              sample_size: 400}
      panel: {strategy: vote, models: [small, large, other]}
      split: {strategy: route, routes: {classify: small, extract: large}, default: large}
      pick:  {strategy: route, default: large,
              scores: {small: {classify: 0.9, complete: 0.6}, large: {classify: 0.8, extract: 0.95}}}
      meas:  {strategy: route, default: large, scores: from_evaluations}   # measured: llm_evaluations

and ``strategy_model.StrategyModel`` registers it in the Engine under its name, so columns use it
like any model. Members are real models (strategies do not nest).

A member not asked because the spend limit was reached (``ErrorKind.BUDGET``) makes the whole
strategy call that failure: a cascade that could not escalate, or a vote short of a member, is
not stored as if it had run. Fallback on failure is not a strategy here: it is each model's ``fallbacks`` (failover.py), and
applies inside every strategy. Each model's answer is cached under its own key, so re-running a
strategy pays only for what is new. The returned output's cost and tokens are the sum of every
answer paid for now (cached answers count nothing).
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Collection, Mapping

from ..errors import ConfigError, ErrorKind, ModelError
from .config import check_keys
from .model_io import ModelInput, ModelOutput, TokenUsage

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["InferenceStrategy", "TASKS", "task_of", "SCORES_FROM_EVALUATIONS"]

TASKS = ("complete", "classify", "extract")
_TASK_OF_FORMAT = {"text": "complete", "labels": "classify", "json": "extract"}
_KEYS = ("strategy", "models", "min_confidence", "routes", "default", "scores", "target_accuracy",
         "failure_probability", "sample_size")
_GUARANTEE_KEYS = ("target_accuracy", "failure_probability", "sample_size")
SCORES_FROM_EVALUATIONS = "from_evaluations"


def task_of(inp: ModelInput) -> str:
    """The task type of a request, from its response format (labels: classify, JSON: extract)."""
    return _TASK_OF_FORMAT.get(inp.response_format.type, "complete")


@dataclass(frozen=True)
class InferenceStrategy:
    kind: str
    models: tuple[str, ...] = ()  # route: (default,)
    min_confidence: float = 0.8
    routes: Mapping[str, str] = field(default_factory=dict)
    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # route: model -> task -> score
    # route: "from_evaluations" = scores are each model's measured accuracy per task (llm_evaluations),
    # read before a fill (pg.cascades.prepare_strategy); the cache key names the source, not the numbers
    scores_source: str | None = None
    target_accuracy: float | None = None  # cascade: a guaranteed cascade (guarantee.py) when set
    failure_probability: float = 0.05
    sample_size: int = 400  # keys also sent to the oracle to choose the thresholds
    thresholds: tuple[float, ...] | None = None  # guaranteed cascade: set by calibration (one per cheaper model)

    KINDS = ("cascade", "vote", "route")

    @classmethod
    def cascade(cls, models, min_confidence: float = 0.8, *, target_accuracy: float | None = None,
                failure_probability: float = 0.05, sample_size: int = 400) -> "InferenceStrategy":
        return cls("cascade", tuple(models), min_confidence=min_confidence, target_accuracy=target_accuracy,
                   failure_probability=failure_probability, sample_size=sample_size).validate()

    @classmethod
    def vote(cls, models) -> "InferenceStrategy":
        return cls("vote", tuple(models)).validate()

    @classmethod
    def route(cls, routes: Mapping[str, str], default: str,
              scores: Mapping[str, Mapping[str, float]] | None = None) -> "InferenceStrategy":
        return cls("route", (default,), routes=dict(routes),
                   scores={m: dict(t) for m, t in (scores or {}).items()}).validate()

    @classmethod
    def from_dict(cls, data: Mapping, path: str, models: Collection[str],
                  strategies: Collection[str] = ()) -> "InferenceStrategy":
        """A ``models:`` entry with a ``strategy:`` key. Members must be in ``models`` (real models);
        naming one of ``strategies`` is an error (no nesting). ConfigError lists every problem."""
        problems: list[str] = []
        try:
            check_keys(dict(data), _KEYS, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
        kind = data.get("strategy")
        known = ", ".join(sorted(models)) or "none defined"

        def member(value, where: str) -> str:
            if not isinstance(value, str) or not value:
                problems.append(f"{where}: {value!r} must be the name of a model")
            elif value in strategies:
                problems.append(f"{where}: {value!r} is a strategy; strategies do not nest, name real models")
            elif value not in models:
                problems.append(f"{where}: {value!r} is not a defined model (models: {known})")
            return str(value)

        names: tuple[str, ...] = ()
        routes: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        extra: dict[str, Any] = {}  # fields only some kinds set (route: scores_source)
        min_confidence = data.get("min_confidence", 0.8) if kind == "cascade" else 0.8
        unused = {"route": ("models", "min_confidence", *_GUARANTEE_KEYS),
                  "vote": ("routes", "default", "min_confidence", "scores", *_GUARANTEE_KEYS),
                  "cascade": ("routes", "default", "scores")}
        for key in unused.get(kind, ()):
            if key in data:
                problems.append(f"{path}.{key}: not used by strategy '{kind}'; remove it")
        if kind not in cls.KINDS:
            problems.append(f"{path}.strategy: {kind!r} is unknown; use one of {', '.join(cls.KINDS)}")
        elif kind == "route":
            raw_routes = data.get("routes") or {}
            if not isinstance(raw_routes, Mapping):
                problems.append(f"{path}.routes: expected a mapping of task -> model, e.g. {{classify: small}}")
                raw_routes = {}
            routes = {str(task): member(target, f"{path}.routes.{task}") for task, target in raw_routes.items()}
            if data.get("scores") == SCORES_FROM_EVALUATIONS:
                extra["scores_source"] = SCORES_FROM_EVALUATIONS
            else:
                scores = _scores(data.get("scores") or {}, f"{path}.scores", member, problems)
            if data.get("default") is None:
                problems.append(f"{path}.default: missing; name the model for tasks without a route")
            else:
                names = (member(data["default"], f"{path}.default"),)
        else:
            raw = data.get("models") or []  # missing: problems() asks for at least one
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, (list, tuple)):
                problems.append(f"{path}.models: expected a list of model names, e.g. [small, large]")
                raw = []
            names = tuple(member(m, f"{path}.models") for m in raw)
            if len(set(names)) != len(names):
                problems.append(f"{path}.models: a model is listed twice; remove the duplicate")
            if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)):
                problems.append(f"{path}.min_confidence: {min_confidence!r} must be a number from 0 to 1")
                min_confidence = 0.8
        guarantee = {k: data[k] for k in _GUARANTEE_KEYS if k in data and kind == "cascade"}
        for key, value in guarantee.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{path}.{key}: {value!r} must be a number")
                guarantee[key] = None
        guarantee = {k: v for k, v in guarantee.items() if v is not None}
        guarantee.update(extra)
        if kind in cls.KINDS:
            problems.extend(cls(kind, names, float(min_confidence), routes, scores, **guarantee)
                            .problems(path, check_kind=False))
        if problems:
            raise ConfigError(problems)
        return cls(kind, names, float(min_confidence), routes, scores, **guarantee)

    @property
    def members(self) -> tuple[str, ...]:
        """Every model the strategy may call, in order, once each."""
        return tuple(dict.fromkeys((*self.models, *self.routes.values(), *self.scores)))

    def candidates(self, task: str) -> tuple[str, ...]:
        """Route: the models for ``task``, in order of preference (see the module docstring)."""
        scored = sorted((m for m, by_task in self.scores.items() if by_task.get(task, 0) > 0),
                        key=lambda m: -self.scores[m][task])  # stable: ties keep the listed order
        first = (self.routes[task],) if task in self.routes else ()
        return tuple(dict.fromkeys((*first, *scored, *self.models)))

    def problems(self, path: str = "strategy", check_kind: bool = True) -> list[str]:
        out = []
        if check_kind and self.kind not in self.KINDS:
            out.append(f"{path}.kind: {self.kind!r} is unknown; use one of {', '.join(self.KINDS)}")
        if not self.models and self.kind != "route":
            out.append(f"{path}.models: give at least one model name")
        if self.kind == "vote" and len(self.models) < 2:
            out.append(f"{path}.models: a vote needs at least two models")
        if not 0 <= self.min_confidence <= 1:
            out.append(f"{path}.min_confidence: {self.min_confidence!r} must be between 0 and 1")
        if self.target_accuracy is not None:
            if not 0 < self.target_accuracy <= 1:
                out.append(f"{path}.target_accuracy: {self.target_accuracy!r} must be in (0, 1], e.g. 0.9")
            if not 0 < self.failure_probability < 1:
                out.append(f"{path}.failure_probability: {self.failure_probability!r} must be in (0, 1), e.g. 0.05")
            if int(self.sample_size) != self.sample_size or self.sample_size < 10:
                out.append(f"{path}.sample_size: {self.sample_size!r} must be a whole number >= 10, e.g. 400")
            if len(self.models) < 2:
                out.append(f"{path}.models: a guaranteed cascade needs cheaper models and an oracle (the last)")
        for task in self.routes:
            if task not in TASKS:
                out.append(f"{path}.routes.{task}: unknown task; use one of {', '.join(TASKS)}")
        for model, by_task in self.scores.items():
            for task, score in by_task.items():
                if task not in TASKS:
                    out.append(f"{path}.scores.{model}.{task}: unknown task; use one of {', '.join(TASKS)}")
                elif isinstance(score, bool) or not isinstance(score, (int, float)) or score < 0:
                    out.append(f"{path}.scores.{model}.{task}: {score!r} must be a number >= 0 "
                               "(higher is preferred; 0 = not suited)")
        return out

    def validate(self, path: str = "strategy") -> "InferenceStrategy":
        problems = self.problems(path)
        if problems:
            raise ConfigError(problems, context="inference strategy")
        return self

    def describe(self, configs: Mapping[str, Any]) -> dict:
        """What the answers depend on (part of the cache key): the kind, its parameters and each
        member's provider, model_version and default temperature and max_tokens. Member names are
        left out, as model names are."""
        def who(name: str) -> dict:
            c = configs[name]
            return {"provider": c.provider, "model_version": c.model_version, "temperature": float(c.temperature),
                    "max_tokens": int(c.max_tokens)}

        if self.kind == "route":
            out = {"strategy": "route", "default": who(self.models[0]),
                   "routes": {task: who(m) for task, m in sorted(self.routes.items())}}
            if self.scores_source:  # the numbers change with each evaluation; the key names their source
                out["scores"] = self.scores_source
            elif self.scores:  # only when set: the keys of plain routes stay what they were
                out["scores"] = {task: [[who(m), float(self.scores[m][task])] for m in self.candidates(task)
                                        if self.scores.get(m, {}).get(task, 0) > 0] for task in TASKS}
            return out
        out = {"strategy": self.kind, "models": [who(m) for m in self.models]}
        if self.kind == "cascade":
            out["min_confidence"] = float(self.min_confidence)
            if self.target_accuracy is not None:  # only when set: plain cascades keep their keys
                out["target_accuracy"] = float(self.target_accuracy)
                out["failure_probability"] = float(self.failure_probability)
        return out

    async def acall(self, engine: "Engine", inp: ModelInput, *, task: str | None = None,
                    context: dict | None = None) -> ModelOutput:
        if self.kind == "route":
            return await engine.acall(self._usable(engine, self.candidates(task or task_of(inp))), inp,
                                      context=context)
        # cascade and vote decide on each member's confidence: ask the members for it
        inp = replace(inp, want_confidence=True)
        if self.kind == "cascade":
            return await self._cascade(engine, inp, context)
        return await self._vote(engine, inp, context)

    def call(self, engine: "Engine", inp: ModelInput, **kwargs) -> ModelOutput:
        return engine.loop.run(self.acall(engine, inp, **kwargs))

    @staticmethod
    def _usable(engine: "Engine", names: tuple[str, ...]) -> str:
        """The first of ``names`` that is enabled and whose circuit is not open (else the first)."""
        for name in names:
            if engine.registry.get(name).status.refresh().available:
                return name
        return names[0]

    def accepts(self, index: int, out: ModelOutput) -> bool:
        """Cascade: is member ``index``'s answer final? A guaranteed cascade uses its calibrated
        thresholds (a missing confidence never passes one above 0); uncalibrated, only the oracle answers."""
        if not out.ok:
            return False
        if self.target_accuracy is None:
            return out.confidence is None or out.confidence >= self.min_confidence
        if index >= len(self.models) - 1:
            return True
        return self.thresholds is not None and (out.confidence or 0.0) >= self.thresholds[index]

    async def _cascade(self, engine, inp, context) -> ModelOutput:
        answers: list[ModelOutput] = []
        guaranteed_uncalibrated = self.target_accuracy is not None and self.thresholds is None
        for index, name in enumerate(self.models):
            if guaranteed_uncalibrated and index < len(self.models) - 1:
                continue  # no thresholds chosen yet: the oracle alone meets any target
            out = await engine.acall(name, inp, context=context)
            answers.append(out)
            if self.accepts(index, out):
                break
        refused = _refused(answers)
        if refused is not None:  # the escalation the strategy asked for was not sent
            return _with_total_cost(refused, answers)
        ok = [a for a in answers if a.ok]
        if self.target_accuracy is not None and answers[-1].ok:
            # the accepted answer or the oracle's: the guarantee is agreement with the oracle
            return _with_total_cost(answers[-1], answers)
        best = max(ok, key=lambda a: a.confidence or 0.0) if ok else answers[-1]
        return _with_total_cost(best, answers)

    async def _vote(self, engine, inp, context) -> ModelOutput:
        answers = await asyncio.gather(*(engine.acall(m, inp, context=context) for m in self.models))
        refused = _refused(answers)
        if refused is not None:  # a vote short of a member is not the vote the strategy describes
            return _with_total_cost(refused, answers)
        ok = [a for a in answers if a.ok]
        if not ok:
            return _with_total_cost(answers[0], answers)
        if all(isinstance(a.value, dict) for a in ok):
            merged = _merge_objects([a.value for a in ok])
            winner = replace(ok[0], value=merged, text=json.dumps(merged, ensure_ascii=False, separators=(",", ":")),
                             confidence=None)
            try:  # the merge of valid objects may still break the schema (e.g. a dependency)
                winner.text, winner.value = inp.response_format.validate(winner.text)
            except ModelError:
                winner = max(ok, key=lambda a: a.confidence or 0.0)
            return _with_total_cost(winner, answers)
        counts = Counter(_hashable(a.value) for a in ok)
        weight = {v: sum(a.confidence or 0.0 for a in ok if _hashable(a.value) == v) for v in counts}
        top = max(counts, key=lambda v: (counts[v], weight[v]))
        winner = max((a for a in ok if _hashable(a.value) == top), key=lambda a: a.confidence or 0.0)
        # agreement is the confidence of a vote: 3 of 3 models agreeing is worth more than 2 of 3
        winner = replace(winner, confidence=counts[top] / len(self.models))
        return _with_total_cost(winner, answers)


def _scores(raw: Any, path: str, member, problems: list[str]) -> dict[str, dict[str, float]]:
    """``scores: {model: {task: score}}`` of a route, each model checked by ``member``."""
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: expected a mapping of model -> {{task: score}}, e.g. {{small: {{classify: 0.9}}}}")
        return {}
    out: dict[str, dict[str, float]] = {}
    for model, by_task in raw.items():
        name = member(model, f"{path}.{model}")
        if not isinstance(by_task, Mapping):
            problems.append(f"{path}.{model}: expected a mapping of task -> score, e.g. {{classify: 0.9}}")
            continue
        out[name] = dict(by_task)  # values checked by problems()
    return out


# not asked: the spend limit refused the request, or another run took over the key's claim (lease.py)
_NOT_ASKED = (ErrorKind.BUDGET, ErrorKind.CLAIM_LOST)


def _refused(answers: list[ModelOutput]) -> ModelOutput | None:
    """A member the spend limit kept from being asked (ErrorKind.BUDGET), or not asked because the
    key's claim was lost (CLAIM_LOST), if any: then the strategy's answer is that failure, so
    nothing is cached under the strategy's key and the next run asks again (the members' answers
    paid now are cached under their own keys)."""
    return next((a for a in answers if a.error_kind in _NOT_ASKED), None)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _merge_objects(objects: list[dict]) -> dict:
    merged: dict = {}
    for key in dict.fromkeys(k for obj in objects for k in obj):
        values = [obj[key] for obj in objects if key in obj]
        if len(values) * 2 <= len(objects) and len(objects) > 1:
            continue  # a field only a minority of models produced is not kept
        counts = Counter(_hashable(v) for v in values)
        top = counts.most_common(1)[0][0]
        merged[key] = next(v for v in values if _hashable(v) == top)
    return merged


def _with_total_cost(output: ModelOutput, answers: list[ModelOutput]) -> ModelOutput:
    """Paid is paid: the strategy's answer carries the cost and tokens of every answer paid for now.
    Cached answers cost nothing this time; the answer is ``cached`` only if every one was."""
    tokens = TokenUsage()
    for answer in answers:
        if not answer.cached:
            tokens = tokens + answer.tokens
    return replace(output, cost_usd=sum(a.cost_usd for a in answers), tokens=tokens,
                   cached=all(a.cached for a in answers))
