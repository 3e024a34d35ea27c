"""What one fill did: ``FillReport`` (counts, tokens, cost, progress) and its ``FillError``.

The output of ``fill_column`` and of each ``LlmFrameSession`` column; the adapter turns it into
dbt log lines (``summary``) and progress events (``as_progress``). Plain data, no SQL.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FillReport", "FillError"]


@dataclass(frozen=True)
class FillError:
    key: str
    kind: str
    message: str


@dataclass
class FillReport:
    """What one fill did. ``cache_hits`` counts distinct keys answered without paying now (cached
    in Postgres at the start, written by a concurrent run meanwhile, or found in the engine's
    journal); ``requests_done`` counts keys handed to the engine (progress); ``requests_sent`` the
    HTTP requests really made (retries included; journal hits and calls refused by an open
    circuit excluded), what the provider bills; ``cost_usd`` is what was paid now.
    ``journal_error``: set when the engine's journal stopped accepting answers during the fill."""

    model: str
    node_id: str | None = None
    rows: int = 0
    distinct_keys: int = 0
    cache_hits: int = 0
    requests_total: int = 0
    requests_done: int = 0
    requests_sent: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    saved_cost_usd: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    stopped: str | None = None  # None | "error" (on_error=fail) | "max_cost"
    first_error: FillError | None = None
    journal_error: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_progress(self) -> dict:
        return {
            "model": self.model, "node_id": self.node_id, "rows": self.rows, "distinct_keys": self.distinct_keys,
            "cache_hits": self.cache_hits, "requests_done": self.requests_done,
            "requests_total": self.requests_total, "requests_sent": self.requests_sent, "errors": self.errors,
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8), "eta_s": self.eta_s, "elapsed_s": round(self.elapsed_s, 3),
        }

    def summary(self) -> str:
        text = (f"{self.model}: {self.rows} rows, {self.distinct_keys} distinct keys, {self.cache_hits} cached, "
                f"{self.requests_sent} requested, {self.errors} failed, {self.tokens} tokens, "
                f"${self.cost_usd:.4f} paid, ${self.saved_cost_usd:.4f} saved, {self.elapsed_s:.1f}s")
        if self.stopped:
            text += f" (stopped: {self.stopped})"
        return text
