"""What a plan filled level by level asks for (llm_aggregate's tree, top_k's tournament): a level's
prompts are known only once the level below it is answered, so a run counts what each level it
walked lacked, and an estimate adds a bound for the levels it could not see."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LevelRequests"]


@dataclass
class LevelRequests:
    missing_by_level: list[int] = field(default_factory=list)  # distinct prompts without an answer, per level
    upper_bound: int = 0  # estimate: at most this many more requests above the levels walked

    @property
    def requested(self) -> int:
        """Requests for the levels walked (a real run: what it asked for)."""
        return sum(self.missing_by_level)

    @property
    def estimate(self) -> int:
        return self.requested + self.upper_bound

    @property
    def first_level(self) -> int:
        """The first level's missing prompts: known exactly even in an estimate."""
        return self.missing_by_level[0] if self.missing_by_level else 0
