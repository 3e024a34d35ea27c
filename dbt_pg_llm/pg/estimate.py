"""Estimate before paying: what filling a column would request and cost, requesting nothing.

``estimate_column`` streams the distinct prompts a fill would request (``join.uncached_prompts_sql``:
no usable answer in ``llm_results``), leaves out those the local journal still holds (a fill gets
them unpaid, unless the database invalidated the key after they were journaled: decision 0024), and prices each with the budget's own estimator (``spend.estimate_cost`` /
``estimate_prompt_tokens``: an upper bound per the model's tokenizer; output: ``max_tokens``, a
classify request's longest label), so the estimate and the hard cap of ``max_cost_usd_per_run``
agree. A strategy is priced by its members (``callable_members``): a cascade or a vote may call
every member, each counted once; a route calls one of its candidates, the dearest is counted.
One answered attempt per member: retries and failover after errors are not counted (decision 0027).
Read-only: no claims, no writes.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from ..models.spend import estimate_cost, estimate_prompt_tokens
from ..models.tokens import output_tokens_bound
from .join import distinct_prompts_sql, invalidation_cutoffs, uncached_prompts_sql
from .spec import ColumnSpec

__all__ = ["ColumnEstimate", "estimate_column", "callable_members"]

_FETCH = 2000


@dataclass
class ColumnEstimate:
    """One column's estimate. ``cost_usd`` is None when the model has no price (e.g. a strategy)."""

    node_id: str | None
    column: str | None
    model: str
    distinct_keys: int = 0
    uncached_keys: int = 0  # would be requested (not in llm_results, not in the journal)
    journal_keys: int = 0  # not in llm_results but in the local journal: written back, unpaid
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    members: tuple[str, ...] = ()  # a strategy: the models priced for each key
    any_one: bool = False  # a route: only the dearest member is counted (one is called)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        cost = f"${self.cost_usd:.4f}" if self.cost_usd is not None else "cost unknown (no price configured)"
        model = self.model
        if self.members:
            model += (f" (one of {', '.join(self.members)}, the dearest counted)" if self.any_one
                      else f" ({' + '.join(self.members)}, each may be called)")
        return (f"{self.node_id or 'model'}.{self.column}: {model}: {self.uncached_keys} of "
                f"{self.distinct_keys} distinct keys uncached"
                + (f" ({self.journal_keys} more in the local journal, free)" if self.journal_keys else "")
                + f", ~{self.prompt_tokens} input + {self.completion_tokens} output tokens at most, {cost}")


def callable_members(strategy: Any, configs: Mapping[str, Any], task: str) -> tuple[dict[str, Any], bool]:
    """The member configs a strategy may call for a ``task`` (a column kind) and whether only one of
    them is called (a route: its candidates) or possibly each (a cascade, a vote)."""
    if strategy.kind == "route":
        return {m: configs[m] for m in strategy.candidates(task)}, True
    return {m: configs[m] for m in strategy.models}, False


def _worst_case(configs: Sequence[Any], any_one: bool, inp) -> tuple[int, int, float]:
    """(prompt tokens, output tokens, cost) at most of ``inp`` for each config: summed, or the dearest."""
    each = [(estimate_prompt_tokens(inp, c), output_tokens_bound(c, inp), estimate_cost(c, inp)) for c in configs]
    if any_one:
        return max(each, key=lambda t: t[2])
    return sum(t[0] for t in each), sum(t[1] for t in each), sum(t[2] for t in each)


def estimate_column(conn, source_sql: str, spec: ColumnSpec, config: Any, fingerprint: str, audit_schema: str,
                    *, node_id: str | None = None,
                    in_journal: Callable[[str, float | None], bool] | None = None,
                    members: Mapping[str, Any] | None = None, any_one: bool = False) -> ColumnEstimate:
    """Price the keys a fill of ``spec`` over ``source_sql`` would request. ``conn``: a psycopg2
    connection with no transaction open (a read-only transaction is used and rolled back).
    ``config``: the model's ModelConfig (no prices: ``cost_usd`` None). ``in_journal(key, not_before)``:
    True when the local journal still holds a usable answer created after ``not_before`` (epoch
    seconds, or None: the key was never invalidated), e.g. ``ResultCache.get(key, not_before)``.
    ``members`` (a strategy: name -> member config, ``callable_members``): priced instead of
    ``config``, summed, or only the dearest when ``any_one``."""
    est = ColumnEstimate(node_id=node_id, column=spec.name, model=spec.model, members=tuple(members or ()),
                         any_one=bool(members) and any_one)
    configs = list(members.values()) if members else [config]
    priced = all(hasattr(c, a) for c in configs
                 for a in ("cost_per_1k_input_tokens", "cost_per_1k_output_tokens", "max_tokens"))
    cost = 0.0
    was_autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("set transaction read only")
            cur.execute(f"select count(*) from ({distinct_prompts_sql(source_sql, spec.prompt_sql)}) d "
                        "where d.p is not null")
            est.distinct_keys = int(cur.fetchone()[0])
        with conn.cursor(name=f"llm_estimate_{uuid.uuid4().hex}") as cur:
            cur.itersize = _FETCH
            cur.execute(uncached_prompts_sql(source_sql, spec, fingerprint, audit_schema))
            listed_at = time.time()
            for row in cur:
                key, prompt = row[0], row[1]
                if in_journal is not None and in_journal(key, invalidation_cutoffs([row], listed_at).get(key)):
                    est.journal_keys += 1
                    continue
                inp = spec.model_input(prompt)
                est.uncached_keys += 1
                if not priced:
                    est.prompt_tokens += estimate_prompt_tokens(inp)
                    continue
                tokens_in, tokens_out, usd = _worst_case(configs, est.any_one, inp)
                est.prompt_tokens += tokens_in
                est.completion_tokens += tokens_out
                cost += usd
    finally:
        conn.rollback()
        conn.autocommit = was_autocommit
    est.cost_usd = round(cost, 6) if priced else None
    return est
