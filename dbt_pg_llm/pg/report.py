"""What one fill did: ``FillReport`` (counts, tokens, cost, progress) and its ``FillError``.

The output of ``fill_column`` and of each ``LlmFrameSession`` column; the adapter turns it into
dbt log lines (``summary``) and progress events (``as_progress``). Plain data, no SQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FillReport", "FillError", "waiting_text"]


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
    ``journal_error``: set when the engine's journal stopped accepting answers during the fill.

    The spend cap (``max_cost_usd``): ``budget_skipped`` keys were not answered because the run's
    spend limit stopped them (dead letters of kind ``budget``, also counted in ``errors``);
    ``budget_cap_usd`` / ``budget_spent_usd`` are the cap and what the whole run has spent against
    it (every fill of the run, settled; None without a cap)."""

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
    budget_skipped: int = 0
    budget_cap_usd: float | None = None
    budget_spent_usd: float | None = None
    waiting_keys: int = 0  # keys claimed by other runs, not answered yet
    # who holds them, biggest first: {run_id, node_id, pid, host, application_name, since (ISO, UTC),
    # since_s, heartbeat_age_s, keys}; filled while the fill waits for them
    waiting_on: list = field(default_factory=list)
    journal_error: str | None = None
    retries: int = 0  # retry attempts of this fill's requests so far (progress)
    rate_limited: int = 0  # HTTP 429 answers seen so far (progress)

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
            "budget_skipped": self.budget_skipped, "budget_cap_usd": self.budget_cap_usd,
            "budget_spent_usd": None if self.budget_spent_usd is None else round(self.budget_spent_usd, 8),
            "waiting_keys": self.waiting_keys, "waiting_on": [dict(w) for w in self.waiting_on],
            "retries": self.retries, "rate_limited": self.rate_limited,
        }

    def budget_text(self) -> str:
        """'$0.0009 of the $0.0010 cap spent, 35 key(s) skipped for budget' ('' without a cap)."""
        if self.budget_cap_usd is None:
            return ""
        text = f"{_usd(self.budget_spent_usd or 0.0)} of the {_usd(self.budget_cap_usd)} cap spent"
        return text + (f", {self.budget_skipped} key(s) skipped for budget" if self.budget_skipped else "")

    def summary(self) -> str:
        text = (f"{self.model}: {self.rows} rows, {self.distinct_keys} distinct keys, {self.cache_hits} cached, "
                f"{self.requests_sent} requested, {self.errors} failed, {self.tokens} tokens, "
                f"${self.cost_usd:.4f} paid, ${self.saved_cost_usd:.4f} saved, {self.elapsed_s:.1f}s")
        if self.stopped:
            text += f" (stopped: {self.stopped})"
        if self.budget_cap_usd is not None:
            text += f"; budget: {self.budget_text()}"
        return text


def _usd(amount: float) -> str:
    """Dollars with enough digits for tiny caps ($0.000800) and plain cents for big ones ($12.3400)."""
    return f"${amount:.4f}" if amount >= 0.01 else f"${amount:.6f}"


def waiting_text(progress: dict) -> str | None:
    """What a progress line says about keys claimed by other runs (None when there are none), e.g.
    ``waiting for 12 key(s) claimed by run 7f3a (node model.p.x, pid 4242 on host-a, dbt-pg_llm) since
    2026-11-28T20:31:02+00:00 (35s ago), last heartbeat 2s ago``."""
    waiting = int(progress.get("waiting_keys") or 0)
    if not waiting:
        return None
    claimers = progress.get("waiting_on") or []
    if not claimers:
        return f"{waiting} key(s) claimed by other runs, waited for at the end"
    parts = []
    for c in claimers:
        who = ", ".join(x for x in (
            f"node {c['node_id']}" if c.get("node_id") else None,
            f"pid {c['pid']}" + (f" on {c['host']}" if c.get("host") else "") if c.get("pid") else None,
            c.get("application_name") or None) if x)
        parts.append(f"{c.get('keys', 0)} by run {c.get('run_id')}" + (f" ({who})" if who else "")
                     + f" since {c.get('since')} ({c.get('since_s', 0):.0f}s ago), "
                     f"last heartbeat {c.get('heartbeat_age_s', 0):.0f}s ago")
    shown = sum(int(c.get("keys") or 0) for c in claimers)
    more = f"; {waiting - shown} more by others" if waiting > shown else ""
    return f"waiting for {waiting} key(s) claimed by another run: " + "; ".join(parts) + more
