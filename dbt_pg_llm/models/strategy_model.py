"""StrategyModel: an InferenceStrategy registered in an Engine under its own name.

Columns, fills and ``Engine.acall`` use it like any model. ``build_engine`` registers one per
strategy defined in the profile (after the real models)::

    engine.register(StrategyModel("smart", InferenceStrategy.cascade(["small", "large"]), engine))

Keys and caching: the strategy's answer is cached under the strategy's own key, computed from its
``config`` (a ``StrategyConfig``) like any model's: ``provider`` is ``strategy:<kind>`` and
``model_version`` the canonical JSON of ``InferenceStrategy.describe`` (kind, min_confidence or
routes, and each member's provider, model_version, temperature and max_tokens), so changing a
member or a parameter changes the key. Each member is called through ``engine.acall``, so its
answer is cached, logged and metered under the member's own key and name: a second strategy over
the same members reuses them, and a re-run pays for nothing. (The strategy's key always differs
from its members' keys, so the engine's single-flight never waits on itself; strategies do not nest.)

Each member answers with its own temperature and max_tokens unless the request sets them (then
all members use the request's): the config's ``temperature`` / ``max_tokens`` are the sentinels
``MEMBER_DEFAULT`` (-1.0 / 0, values no request may set) that ``acall`` turns back into "unset".
So a member's answers are shared with columns that use that model directly.

The strategy records no metrics of its own for the answers it computes (its members do; counting
both would double the totals), only the cache hits on its own key.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping

from ..errors import ConfigError
from .config import ModelConfig
from .keys import canonical_json
from .logs import LogDispatcher
from .metrics import ModelMetrics
from .model_io import ModelInput, ModelOutput
from .status import ModelStatus
from .strategy import InferenceStrategy, task_of

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["StrategyConfig", "StrategyModel", "MEMBER_DEFAULT"]

MEMBER_DEFAULT = (-1.0, 0)  # (temperature, max_tokens): "each member's own", in the key and the call


@dataclass(frozen=True)
class StrategyConfig:
    """What the rest of the engine reads from a model's config, for a strategy."""

    provider: str
    model_version: str
    temperature: float = MEMBER_DEFAULT[0]
    max_tokens: int = MEMBER_DEFAULT[1]
    max_concurrency: int = 16
    members: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    cost_per_1k_input_tokens: float = 0.0
    cost_per_1k_output_tokens: float = 0.0
    enabled: bool = True
    api_url: str | None = None
    base_url: str | None = None

    @classmethod
    def of(cls, strategy: InferenceStrategy, configs: Mapping[str, object], name: str = "strategy") -> "StrategyConfig":
        """``configs``: the members' configs by name (each a real model's ModelConfig)."""
        nested = [m for m in strategy.members if not isinstance(configs.get(m), ModelConfig)]
        if nested:
            raise ConfigError([f"models.{name}: {', '.join(map(repr, nested))} must be real models "
                               "(strategies do not nest)"], context="inference strategy")
        first = configs[strategy.models[0]]
        return cls(provider=f"strategy:{strategy.kind}", model_version=canonical_json(strategy.describe(configs)),
                   max_concurrency=first.max_concurrency, members=strategy.members)


class StrategyModel:
    """A strategy as a model of an Engine: ``acall`` runs the strategy over the engine's models."""

    def __init__(self, name: str, strategy: InferenceStrategy, engine: "Engine"):
        if not name or not isinstance(name, str):
            raise ConfigError([f"strategy name: {name!r} must be a non-empty string"])
        if name in strategy.members:
            raise ConfigError([f"models.{name}: a strategy cannot use itself"], context="inference strategy")
        self.name = name
        self.strategy = strategy
        self.engine = engine
        self.log = LogDispatcher([])  # Engine.register replaces these with the engine's own
        self.metrics = ModelMetrics(name)
        self.status = ModelStatus()
        self._basis: tuple = ()
        self._config: StrategyConfig | None = None
        self.config  # fail now (RegistryError naming the known models) if a member is missing

    @property
    def config(self) -> StrategyConfig:
        """Follows the members: a member re-configured (``Model.configure``) changes the key."""
        configs = {m: self.engine.registry.get(m).config for m in self.strategy.members}
        basis = tuple(configs.values())
        if self._config is None or basis != self._basis:
            self._config, self._basis = StrategyConfig.of(self.strategy, configs, self.name), basis
        return self._config

    async def acall(self, inp: ModelInput, *, context: dict | None = None, input_hash: str | None = None,
                    operation: str = "call") -> ModelOutput:
        temperature, max_tokens = MEMBER_DEFAULT  # as Engine.acall filled them in: back to "unset"
        inp = replace(inp, temperature=None if inp.temperature == temperature else inp.temperature,
                      max_tokens=None if inp.max_tokens == max_tokens else inp.max_tokens)
        out = await self.strategy.acall(self.engine, inp, task=task_of(inp), context=context)
        # computed now (even from cached member answers): the engine stores it under the strategy's key
        return replace(out, cached=False)

    async def aclose(self) -> None:  # the members own the HTTP clients
        return None

    def __repr__(self) -> str:
        return f"StrategyModel(name={self.name!r}, kind={self.strategy.kind!r}, members={self.strategy.members!r})"
