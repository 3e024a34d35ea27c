"""Adapter glue of ``pg_llm.semantic_join``: count the inputs in SQL and choose the plan (the engine's
``operators/semantic_join.py``); the macro then fills through ``llm_enrich`` (the one fill)."""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from dbt_pg_llm.models.tokens import token_counter
from dbt_pg_llm.operators.semantic_join import PlanCounts, check_join_arguments, choose_plan

__all__ = ["check_arguments", "plan_join"]

# bytes / 4: a rough token count, only used to break ties between plans of equal calls
_TOKENS = "coalesce(sum(octet_length({t})), 0) / 4"


def check_arguments(args: Dict[str, Any]) -> None:
    """Raise ConfigError naming each bad argument (the caller turns it into a compile error)."""
    check_join_arguments(args)


def _one(cur, sql: str):
    cur.execute(sql)
    return cur.fetchone()


def plan_join(connect: Callable[[], Any], model_config: Any, left_sql: str, right_sql: str, left_text: str,
              right_text: str, blocked_sql: Optional[str], plan: str, max_labels: int, predicate: str,
              max_label_tokens: int) -> Dict[str, Any]:
    """Count each plan's calls over the inputs (read-only) and choose one; with the classify plan,
    also the labels: the right side's distinct texts, blank-trimmed, sorted (a stable key)."""
    counter = token_counter(model_config)
    conn = connect()
    try:
        with conn.cursor() as cur:
            # ::text: the pair prompt and the labels are texts (an integer or varchar column works too)
            left = f"(select distinct pg_llm_l.{left_text}::text as t from {left_sql} as pg_llm_l " \
                   f"where pg_llm_l.{left_text} is not null) as d"
            n, left_tokens = _one(cur, f"select count(*), {_TOKENS.format(t='d.t')} from {left}")
            right = f"(select distinct pg_llm_r.{right_text}::text as t from {right_sql} as pg_llm_r " \
                    f"where pg_llm_r.{right_text} is not null) as d"
            m, right_tokens = _one(cur, f"select count(*), {_TOKENS.format(t='d.t')} from {right}")
            cur.execute(f"select distinct btrim(pg_llm_r.{right_text}::text) as t from {right_sql} as pg_llm_r "
                        f"where btrim(pg_llm_r.{right_text}::text) <> '' order by 1 limit {int(max_labels) + 1}")
            labels = [row[0] for row in cur.fetchall()]
            blocked = blocked_tokens = None
            if blocked_sql:
                blocked, blocked_tokens = _one(
                    cur, "select count(*), " + _TOKENS.format(t="b.lt") + " + " + _TOKENS.format(t="b.rt")
                    + " from (select distinct pg_llm_left_text as lt, pg_llm_right_text as rt from ("
                    + blocked_sql + ") as s where pg_llm_left_text is not null and pg_llm_right_text is not null) as b")
    finally:
        conn.close()
    fits = len(labels) <= max_labels
    counts = PlanCounts(left_texts=int(n), right_texts=int(m), blocked_pairs=None if blocked is None else int(blocked),
                        left_tokens=int(left_tokens), right_tokens=int(right_tokens),
                        blocked_tokens=int(blocked_tokens or 0),
                        labels=len(labels) if fits else None,
                        label_tokens=counter.count(json.dumps(labels, ensure_ascii=False)) if fits else 0)
    choice = choose_plan(counts, plan, max_labels=max_labels, max_label_tokens=max_label_tokens,
                         predicate_tokens=counter.count(predicate))
    out = choice.as_dict()
    out["labels"] = labels if choice.chosen == "classify" else []
    return out
