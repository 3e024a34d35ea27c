"""Failover: when a model fails for good on a call (retries spent, or its circuit is open), the next
backup model serves the call. The output's ``model`` says which one answered.

An INVALID_INPUT failure does not fail over: the request itself is wrong, and every backup would
reject it too (and bill for it). Nor does BUDGET: the spend limit is reached; a backup must not
silently serve the rest of the run. Nor does CLAIM_LOST: another run answers that key (lease.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ErrorKind
from .model_io import ModelInput, ModelOutput

if TYPE_CHECKING:
    from .registry import ModelRegistry

__all__ = ["Failover"]

_NO_FAILOVER = {ErrorKind.NONE, ErrorKind.INVALID_INPUT, ErrorKind.BUDGET, ErrorKind.CLAIM_LOST}


@dataclass(frozen=True)
class Failover:
    backup_models: tuple[str, ...] = ()
    auto_failover: bool = True

    @classmethod
    def for_model(cls, registry: "ModelRegistry", name: str) -> "Failover":
        """The failover chain configured on a model (its ``fallbacks``)."""
        return cls(tuple(registry.get(name).config.fallbacks))

    async def acall(self, registry: "ModelRegistry", name: str, inp: ModelInput, **call_kwargs) -> ModelOutput:
        output = await registry.get(name).acall(inp, **call_kwargs)
        if not self.auto_failover:
            return output
        tried = {name}
        for backup in self.backup_models:
            if output.ok or output.error_kind in _NO_FAILOVER:
                break
            if backup in tried:
                continue
            tried.add(backup)
            previous = output
            output = await registry.get(backup).acall(inp, **call_kwargs)
            # Paid is paid: the primary's failed attempts count in the call's cost too.
            output.cost_usd += previous.cost_usd
            output.tokens = output.tokens + previous.tokens
        return output
