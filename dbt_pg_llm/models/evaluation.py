"""Evaluation as data (issue 21.2, decision 0033): each model's accuracy on a golden set, as rows.

    rows = evaluate(engine, ["small", "large", "sure"], inputs, golden, node_id="model.p.reviews",
                    column="sentiment", golden_name="golden_reviews")
    store_evaluations(conn, "llm_audit", rows)                 # pg.cascades: llm_evaluations
    scores = scores_from_evaluations(conn, "llm_audit", ...)   # a route's ``scores``, measured

``evaluate`` asks every named model (a real model or a strategy) for each golden input through
``engine.acall`` (cached and audited like any call: a re-evaluation pays nothing) and measures, per
model: accuracy (answers equal to the golden value; JSON compared as canonical JSON), cost per row
(what the answers cost when paid, cached ones included, so the figure does not depend on the cache),
mean latency of the answers paid now, and calibration: accuracy by confidence decile
(``[{"decile": 0..9, "rows": n, "accuracy": a}]``, answers without a confidence left out).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError
from .cascade_calibration import same_answer
from .model_io import ModelInput
from .strategy import task_of

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["EvaluationRow", "evaluate", "aevaluate", "confidence_deciles"]


@dataclass(frozen=True)
class EvaluationRow:
    node_id: str
    column_name: str
    golden: str
    model: str
    strategy: str | None  # the strategy kind when ``model`` is a strategy
    task: str
    rows_compared: int
    accuracy: float | None
    cost_per_row: float | None
    latency_ms: float | None
    calibration: list[dict] = field(default_factory=list)


def confidence_deciles(pairs: Sequence[tuple[float | None, bool]]) -> list[dict]:
    """Accuracy by confidence decile: decile d holds confidences in [d/10, (d+1)/10) (1.0 in decile 9)."""
    buckets: dict[int, list[bool]] = {}
    for confidence, right in pairs:
        if confidence is None:
            continue
        buckets.setdefault(min(9, int(confidence * 10)), []).append(right)
    return [{"decile": d, "rows": len(v), "accuracy": sum(v) / len(v)} for d, v in sorted(buckets.items())]


async def aevaluate(engine: "Engine", models: Sequence[str], inputs: Sequence[ModelInput], golden: Sequence[Any], *,
                    node_id: str, column: str, golden_name: str, context: dict | None = None) -> list[EvaluationRow]:
    if len(inputs) != len(golden):
        raise ConfigError([f"evaluate {node_id}.{column}: {len(inputs)} inputs but {len(golden)} golden values; "
                           f"give one golden value per input (matched on the key column of {golden_name!r})"])
    if not inputs:
        raise ConfigError([f"evaluate {node_id}.{column}: the golden relation {golden_name!r} matched no rows; "
                           "check its key column"])
    asked = [replace(inp, want_confidence=True) for inp in inputs]
    out = []
    for name in models:
        answers = await asyncio.gather(*(engine.acall(name, inp, context=context) for inp in asked))
        right = [a.ok and same_answer(a.value, g) for a, g in zip(answers, golden)]
        paid_now = [a for a in answers if a.ok and not a.cached]
        strategy = getattr(engine.registry.get(name), "strategy", None)
        out.append(EvaluationRow(
            node_id=node_id, column_name=column, golden=golden_name, model=name,
            strategy=strategy.kind if strategy is not None else None, task=task_of(inputs[0]),
            rows_compared=len(answers), accuracy=sum(right) / len(answers),
            cost_per_row=sum(a.cost_usd if not a.cached else a.saved_cost_usd for a in answers) / len(answers),
            latency_ms=sum(a.latency_ms for a in paid_now) / len(paid_now) if paid_now else None,
            calibration=confidence_deciles([(a.confidence, r) for a, r in zip(answers, right)])))
    return out


def evaluate(engine: "Engine", models: Sequence[str], inputs: Sequence[ModelInput], golden: Sequence[Any],
             **kwargs) -> list[EvaluationRow]:
    return engine.loop.run(aevaluate(engine, models, inputs, golden, **kwargs))
