"""Hybrid inference: serve one call from several models.

    InferenceStrategy.cascade(["small", "large"], min_confidence=0.8)
        ask the cheap model first; escalate to the next only when the answer failed or its
        confidence is below ``min_confidence`` (answers without a confidence are accepted).
    InferenceStrategy.vote(["a", "b", "c"])
        ask all models in parallel; the most common value wins (ties: the higher summed
        confidence); JSON objects are merged field by field, each field by majority.
    InferenceStrategy.route({"classify": "small", "extract": "large"}, default="large")
        pick the model by task type (the column kind: complete / classify / extract).

Fallback on failure is not a strategy here: it is each model's ``fallbacks`` (failover.py), and
applies inside every strategy. Each model's answer is cached under its own key, so re-running a
strategy pays only for what is new. The returned output's cost is the sum of every answer paid for.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from .errors import ConfigError, ModelError
from .model_io import ModelInput, ModelOutput, TokenUsage

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["InferenceStrategy"]


@dataclass(frozen=True)
class InferenceStrategy:
    kind: str
    models: tuple[str, ...] = ()
    min_confidence: float = 0.8
    routes: Mapping[str, str] = field(default_factory=dict)

    KINDS = ("cascade", "vote", "route")

    @classmethod
    def cascade(cls, models, min_confidence: float = 0.8) -> "InferenceStrategy":
        return cls("cascade", tuple(models), min_confidence=min_confidence).validate()

    @classmethod
    def vote(cls, models) -> "InferenceStrategy":
        return cls("vote", tuple(models)).validate()

    @classmethod
    def route(cls, routes: Mapping[str, str], default: str) -> "InferenceStrategy":
        return cls("route", (default,), routes=dict(routes)).validate()

    def validate(self) -> "InferenceStrategy":
        problems = []
        if self.kind not in self.KINDS:
            problems.append(f"strategy.kind: {self.kind!r} is unknown; use one of {', '.join(self.KINDS)}")
        if not self.models:
            problems.append("strategy.models: give at least one model name")
        if self.kind == "vote" and len(self.models) < 2:
            problems.append("strategy.models: a vote needs at least two models")
        if not 0 <= self.min_confidence <= 1:
            problems.append(f"strategy.min_confidence: {self.min_confidence!r} must be between 0 and 1")
        if problems:
            raise ConfigError(problems, context="inference strategy")
        return self

    async def acall(self, engine: "Engine", inp: ModelInput, *, task: str | None = None,
                    context: dict | None = None) -> ModelOutput:
        if self.kind == "route":
            return await engine.acall(self.routes.get(task or "", self.models[0]), inp, context=context)
        if self.kind == "cascade":
            return await self._cascade(engine, inp, context)
        return await self._vote(engine, inp, context)

    def call(self, engine: "Engine", inp: ModelInput, **kwargs) -> ModelOutput:
        return engine.loop.run(self.acall(engine, inp, **kwargs))

    async def _cascade(self, engine, inp, context) -> ModelOutput:
        answers: list[ModelOutput] = []
        for name in self.models:
            out = await engine.acall(name, inp, context=context)
            answers.append(out)
            if out.ok and (out.confidence is None or out.confidence >= self.min_confidence):
                break
        ok = [a for a in answers if a.ok]
        best = max(ok, key=lambda a: a.confidence or 0.0) if ok else answers[-1]
        return _with_total_cost(best, answers)

    async def _vote(self, engine, inp, context) -> ModelOutput:
        answers = await asyncio.gather(*(engine.acall(m, inp, context=context) for m in self.models))
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
    """Paid is paid: the strategy's answer carries the cost and tokens of every answer it used."""
    tokens = TokenUsage()
    for answer in answers:
        tokens = tokens + answer.tokens
    return replace(output, cost_usd=sum(a.cost_usd for a in answers), tokens=tokens)
