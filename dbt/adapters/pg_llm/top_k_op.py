"""Adapter glue of ``pg_llm.top_k`` (decision 0038): resolve the windows' column spec, play each
partition's tournament (``dbt_pg_llm/operators/top_k.py``) filling each level through the adapter's
own ``llm_fill`` (the one fill: claims, journal, spend cap, llm_calls, dead letters, on_error), and
return the model's SELECT: the relation's top-k rows per partition with their rank."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from dbt_pg_llm.operators.top_k import (DEFAULT_WINDOW, RANK_PHRASE, RANKING_SCHEMA, check_top_k_arguments, run_top_k,
                                        top_k_sql)

__all__ = ["check_arguments", "window_spec", "top_k"]


def check_arguments(args: Dict[str, Any]) -> None:
    """Raise ConfigError naming each bad argument (the caller turns it into a compile error)."""
    check_top_k_arguments(args)


def window_spec(args: Dict[str, Any]) -> Dict[str, Any]:
    """Every window is an extract of ``{"ranking": [numbers]}`` with the fixed rank phrase."""
    spec: Dict[str, Any] = {"prompt_sql": "pg_llm_prompt", "kind": "extract", "schema": dict(RANKING_SCHEMA),
                            "instructions": RANK_PHRASE}
    for name in ("model", "max_tokens"):
        if args.get(name) is not None:
            spec[name] = args[name]
    return spec


def top_k(column: Dict[str, Any], connect: Callable[[], Any], audit_schema: str, relation_sql: str,
          args: Dict[str, Any], quote: Callable[[str], str], fill: Optional[Callable[[str], Any]],
          say: Callable[[str], None], distance_sql: Optional[str] = None, node_id: Optional[str] = None,
          on_error: Any = None, estimate: bool = False) -> str:
    """Play the tournaments (``fill`` None: only cached windows are used; with ``estimate`` the
    missing windows are counted and logged) and return the SELECT of the ranked rows."""
    k, window = int(args["k"]), int(args.get("window") or DEFAULT_WINDOW)
    candidates = args.get("candidates") or (3 * k if distance_sql else None)
    partition, id_sql = "pg_llm_src." + quote(args["partition_by"]), "pg_llm_src." + quote(args["id_column"])
    result = run_top_k(connect, relation_sql, partition, id_sql, args["text_sql"], args["query"], k,
                       fingerprint=column["fingerprint"], audit_schema=audit_schema, model=column["model"],
                       window=window, distance_sql=distance_sql, candidates=candidates,
                       fill=None if estimate else fill, node_id=node_id, on_error=on_error)
    parts = len(result.ranked)
    first = " after an embedding first pass of %d candidate(s) per partition" % candidates if distance_sql else ""
    if estimate:
        say(f"estimate: {result.estimate} request(s) for {parts} partition(s){first}: "
            f"{result.first_level} first-level window(s) exactly, <= {result.estimate - result.first_level} above them")
    elif fill is not None:
        failed = sum(1 for r in result.ranked.values() if r is None)
        say(f"{parts} partition(s){first}, {failed} without a ranking (dead letters); windows per level "
            f"{result.windows_by_level}, requested per level {result.missing_by_level} ({result.requested} in all)")
    return top_k_sql(relation_sql, partition, id_sql, result.ranked, args.get("rank_column") or "rank")
