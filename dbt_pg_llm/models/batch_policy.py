"""BatchPolicy: when and how a model's (or a column's) missing keys go through a provider batch API.

Profile, per model: ``batch: {enabled: true, min_keys: 1000, max_wait_s: 0, discount: 0.5, poll_s: 30}``;
per column: the macro argument ``mode='batch'`` (the model's policy, enabled) or ``mode='normal'``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import ConfigError

__all__ = ["BatchPolicy", "COLUMN_MODES", "BATCH_PROVIDERS"]

COLUMN_MODES = ("batch", "normal")
BATCH_PROVIDERS = ("openai", "anthropic")  # the wire protocols with a batch client (batch_api/)


@dataclass(frozen=True)
class BatchPolicy:
    enabled: bool = False
    min_keys: int = 1000  # fewer uncached keys than this: the normal path (batches answer in hours)
    max_wait_s: float = 0.0  # how long a run waits for its batches before leaving the rows NULL
    discount: float = 0.5  # batch price = list price x discount (OpenAI and Anthropic: 50% off)
    poll_s: float = 30.0  # how often a waiting run asks the provider for the batches' status

    @classmethod
    def from_dict(cls, data, path: str = "batch") -> "BatchPolicy":
        if isinstance(data, BatchPolicy):
            return data
        if data is None:
            return cls()
        if isinstance(data, bool):  # batch: true
            return cls(enabled=data)
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: expected a mapping like {{enabled: true, min_keys: 1000, max_wait_s: 0}}, "
                               f"got {type(data).__name__}"])
        from .config import check_keys

        check_keys(data, [f.name for f in fields(cls)], path)
        policy = cls(**data)
        problems = policy.problems(path)
        if problems:
            raise ConfigError(problems)
        return policy

    def problems(self, path: str = "batch") -> list[str]:
        out = []
        if not isinstance(self.enabled, bool):
            out.append(f"{path}.enabled: {self.enabled!r} must be true or false")
        if isinstance(self.min_keys, bool) or not isinstance(self.min_keys, int) or self.min_keys < 1:
            out.append(f"{path}.min_keys: {self.min_keys!r} must be a whole number >= 1, e.g. 1000 (below it "
                       "the normal path is used)")
        for name, example in (("max_wait_s", "0 to never wait, 3600 for an hour"), ("poll_s", "30")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                out.append(f"{path}.{name}: {value!r} must be a number of seconds >= 0, e.g. {example}")
        if isinstance(self.poll_s, (int, float)) and not isinstance(self.poll_s, bool) and 0 <= self.poll_s < 0.01:
            out.append(f"{path}.poll_s: {self.poll_s!r} is too small; poll at most every 0.01 s, e.g. 30")
        if isinstance(self.discount, bool) or not isinstance(self.discount, (int, float)) \
                or not 0 < self.discount <= 1:
            out.append(f"{path}.discount: {self.discount!r} must be a number in (0, 1], the share of the list price "
                       "a batch request costs, e.g. 0.5")
        return out

    def for_column(self, mode: str | None) -> "BatchPolicy | None":
        """The policy of a column: ``mode='batch'`` switches it on, ``'normal'`` off, None keeps the model's."""
        if mode == "normal":
            return None
        if mode == "batch":
            return replace(self, enabled=True)
        return self if self.enabled else None
