"""Calibrating a guaranteed cascade (issue 21.3, decision 0033): sample, ask every member, choose thresholds.

    cal = calibrate(engine, "sure", inputs, seed=0)   # a StrategyModel whose strategy has target_accuracy
    apply_calibration(engine, "sure", cal)            # its cascade now uses cal.choice.thresholds
    outputs = [engine.call("sure", inp) for inp in inputs]

``calibrate`` draws ``strategy.sample_size`` of the distinct ``inputs`` uniformly (``random.Random(seed)``),
asks every member for each (the oracle, the last member, included), compares each cheaper member's
answer with the oracle's and lets ``guarantee.choose_thresholds`` pick the thresholds. Every answer
goes through ``engine.acall``, so it is cached and audited under the member's own key: the cascade
run that follows pays nothing again for the sampled keys.

``Calibration.basis`` is the fingerprint of the strategy (its members' provider, model_version,
temperature, max_tokens, the target) and of the prompt (system message, response format): a stored
calibration (``pg.cascades``) is reused while it is unchanged, and a change of model or prompt asks
for a new one.
"""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError
from .guarantee import ThresholdChoice, choose_thresholds
from .keys import fingerprint_of
from .model_io import ModelInput

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["Calibration", "calibrate", "acalibrate", "apply_calibration", "calibration_basis", "same_answer"]


@dataclass(frozen=True)
class Calibration:
    strategy: str  # the strategy model's name
    basis: str  # calibration_basis(): reused while the models and prompt are unchanged
    choice: ThresholdChoice
    models: tuple[str, ...]
    sample: tuple[dict, ...] = field(default_factory=tuple)  # per key: input hash, confidences, agrees
    cost_usd: float = 0.0  # paid now for the sample (cached answers count nothing)

    def as_row(self) -> dict[str, Any]:
        """What ``pg.cascades.store_calibration`` writes (JSON-friendly)."""
        c = self.choice
        return {"strategy": self.strategy, "basis": self.basis, "models": list(self.models),
                "target_accuracy": c.target, "failure_probability": c.failure_probability,
                "sample_size": c.sample_size, "thresholds": list(c.thresholds),
                "measured_agreement": c.measured_agreement, "agreement_lower_bound": c.agreement_lower_bound,
                "oracle_share": c.oracle_share, "sample_cost_usd": self.cost_usd,
                "stages": [s.__dict__ for s in c.stages], "sample": list(self.sample)}


def same_answer(a: Any, b: Any) -> bool:
    """Agreement of two answers: equal values (JSON objects compared as canonical JSON)."""
    def canon(v):
        return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return canon(a) == canon(b)


def _strategy_model(engine: "Engine", name: str):
    model = engine.registry.get(name)
    strategy = getattr(model, "strategy", None)
    if strategy is None or strategy.kind != "cascade" or strategy.target_accuracy is None:
        raise ConfigError([f"models.{name}: not a guaranteed cascade; give it strategy: cascade and "
                           "target_accuracy (e.g. 0.9)"], context="cascade calibration")
    return model, strategy


def calibration_basis(engine: "Engine", name: str, inp: ModelInput) -> str:
    """The fingerprint a calibration holds for: the strategy's config (members, target) and the prompt."""
    model, _ = _strategy_model(engine, name)
    return fingerprint_of(model.config, replace(inp, want_confidence=True))


async def acalibrate(engine: "Engine", name: str, inputs: Sequence[ModelInput], *, seed: int = 0,
                     context: dict | None = None, spend_limit: Any = None) -> Calibration:
    """``context`` / ``spend_limit``: as for ``engine.acall`` (a fill passes its own: the sample's
    requests are audited as the run's and count against its cap)."""
    model, strategy = _strategy_model(engine, name)
    if not inputs:
        raise ConfigError([f"models.{name}: no inputs to calibrate on"], context="cascade calibration")
    distinct = list({engine.key_of(name, inp): inp for inp in inputs}.values())
    picked = random.Random(seed).sample(distinct, min(int(strategy.sample_size), len(distinct)))
    members = strategy.models
    asked = [replace(inp, want_confidence=True) for inp in picked]

    async def every_member(inp: ModelInput):
        return await asyncio.gather(*(engine.acall(m, inp, context=context, spend_limit=spend_limit)
                                      for m in members))

    answers = await asyncio.gather(*(every_member(inp) for inp in asked))
    rows, sample = [], []
    cost = 0.0
    for inp, outs in zip(asked, answers):
        cost += sum(o.cost_usd for o in outs if not o.cached)
        oracle = outs[-1]
        if not oracle.ok:  # no reference answer for this key: it cannot count either way
            continue
        confs = [o.confidence if o.ok else None for o in outs[:-1]]
        agrees = [o.ok and same_answer(o.value, oracle.value) for o in outs[:-1]]
        rows.append((confs, agrees))
        sample.append({"input_hash": engine.key_of(name, inp), "confidences": confs, "agrees": agrees})
    if not rows:
        raise ConfigError([f"models.{name}: the oracle {members[-1]!r} answered none of the {len(asked)} "
                           "sampled keys; fix that model (see llm_calls) and calibrate again"],
                          context="cascade calibration")
    choice = choose_thresholds(rows, float(strategy.target_accuracy), float(strategy.failure_probability))
    return Calibration(name, calibration_basis(engine, name, inputs[0]), choice, members, tuple(sample), cost)


def calibrate(engine: "Engine", name: str, inputs: Sequence[ModelInput], **kwargs) -> Calibration:
    return engine.loop.run(acalibrate(engine, name, inputs, **kwargs))


def apply_calibration(engine: "Engine", name: str, calibration: Calibration | Sequence[float]) -> None:
    """Make the strategy model ``name`` cascade with these thresholds (a Calibration or the thresholds)."""
    model, strategy = _strategy_model(engine, name)
    thresholds = calibration.choice.thresholds if isinstance(calibration, Calibration) else tuple(calibration)
    if len(thresholds) != len(strategy.models) - 1:
        raise ConfigError([f"models.{name}: {len(thresholds)} thresholds for {len(strategy.models) - 1} cheaper "
                           "models; calibrate again"], context="cascade calibration")
    model.strategy = replace(strategy, thresholds=tuple(float(t) for t in thresholds))
