"""What a fill says to the dbt user: progress lines, the provider-batch lines, and warnings that count
as dbt warnings (``warn_or_error``: an error under ``--warn-error``). Used by the adapter (impl.py)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from dbt.adapters.events.logging import AdapterLogger

__all__ = ["ProgressLogger", "log_batches", "warn_or_error"]

logger = AdapterLogger("pg_llm")


def log_batches(label: str, batched, audit_schema: str) -> None:
    """The batch side of a fill: what was submitted / collected, and a warning naming open batches."""
    from dbt_pg_llm.errors import redact

    if batched.submitted:
        logger.info(f"{label}: submitted provider batch(es) {', '.join(batched.submitted)}")
    if batched.collected:
        logger.info(f"{label}: collected provider batch(es) {', '.join(batched.collected)}")
    for problem in batched.problems:
        logger.warning(f"{label}: {redact(problem)}")
    if batched.pending_keys or batched.open_batches:
        logger.warning(
            f"{label}: {batched.pending_keys} key(s) wait in open provider batches: "
            f"{'; '.join(batched.open_batches) or 'see the batches list'}. Their rows are NULL (or the on_error "
            f"default) until a later run collects the answers (`dbt run-operation pg_llm.batches` lists the "
            f"open batches of {audit_schema})"
        )


def warn_or_error(message: str) -> None:
    """A dbt warning through dbt's own warn_or_error: shown as a warning, and an error under
    ``--warn-error`` (or ``--warn-error-options '{"error": ["AdapterEventWarning"]}'``)."""
    from dbt.adapters.events.types import AdapterEventWarning
    from dbt_common.events.functions import warn_or_error as fire

    fire(AdapterEventWarning(name=logger.name, base_msg=message, args=()))


class ProgressLogger:
    """fill_column's progress callback (a dict at most every 10 s, or per 10% of the keys) -> one dbt
    log line with retries and 429s seen. While the fill waits
    for keys claimed by another run, the line says who holds them, since when, and how many."""

    def __init__(self, label: str, claim_timeout_s: Optional[float] = None):
        self.label = label
        self.claim_timeout_s = claim_timeout_s

    def __call__(self, progress: Dict[str, Any]) -> None:
        from dbt_pg_llm.pg.report import waiting_text

        p = progress
        total, done = p.get("requests_total", 0) or 0, p.get("requests_done", 0) or 0
        blocked = bool(p.get("waiting_on"))  # our requests are done; we wait for another run's
        if not blocked and (not total or done >= total):
            return  # nothing in flight: the summary line says it all
        eta = p.get("eta_s")
        line = (
            f"{self.label}: {p.get('requests_done', 0)}/{p.get('requests_total', 0)} requests, "
            f"{p.get('cache_hits', 0)} of {p.get('distinct_keys', 0)} keys cached, {p.get('errors', 0)} failed, "
            f"{p.get('retries', 0)} retries ({p.get('rate_limited', 0)} rate-limited 429), "
            + (f"{p['budget_skipped']} skipped for budget (${float(p.get('budget_spent_usd') or 0):.6f} of the "
               f"${float(p.get('budget_cap_usd') or 0):.6f} cap spent), " if p.get("budget_skipped") else "")
            + f"${float(p.get('cost_usd') or 0):.4f}"
            + (f", eta {eta:.0f}s (at the rate so far, retries and back-off included)" if eta and not blocked else "")
        )
        waiting = waiting_text(p)
        if waiting:
            line += f"; {waiting}"
        if blocked and self.claim_timeout_s:
            line += (f" (its keys are taken over if its heartbeat stops for "
                     f"llm.claim_timeout_s={self.claim_timeout_s:g}s)")
        logger.info(line)
