"""Adapter glue of ``pg_llm.llm_aggregate`` (decision 0037): resolve the step's column spec, walk the
groups' trees (``dbt_pg_llm/operators/aggregate.py``) filling each level through the adapter's own
``llm_fill`` (the one fill: claims, journal, spend cap, llm_calls, dead letters, on_error), and
return the model's SELECT: one row per group joined to its root answer in ``llm_results``."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from dbt_pg_llm.errors import redact
from dbt_pg_llm.models.tokens import token_counter
from dbt_pg_llm.operators.aggregate import (DEFAULT_FAN_IN, DEFAULT_MAX_INPUT_TOKENS, SYSTEM_PHRASE, answer_sql,
                                            check_aggregate_arguments, run_aggregate)

__all__ = ["check_arguments", "step_spec", "aggregate"]


def check_arguments(args: Dict[str, Any]) -> None:
    """Raise ConfigError naming each bad argument (the caller turns it into a compile error)."""
    check_aggregate_arguments(args)


def step_spec(args: Dict[str, Any]) -> Dict[str, Any]:
    """The column spec of every step (leaf or reduce): complete with the fixed system phrase, or
    extract with it as instructions when a JSON ``schema`` is given; its prompt is ``pg_llm_prompt``."""
    spec: Dict[str, Any] = {"prompt_sql": "pg_llm_prompt"}
    if args.get("schema") is not None:
        spec.update(kind="extract", schema=dict(args["schema"]), instructions=SYSTEM_PHRASE)
    else:
        spec.update(kind="complete", system=SYSTEM_PHRASE)
    for name in ("model", "max_tokens"):
        if args.get(name) is not None:
            spec[name] = args[name]
    return spec


def aggregate(column: Dict[str, Any], model_config: Any, connect: Callable[[], Any], audit_schema: str,
              relation_sql: str, args: Dict[str, Any], quote: Callable[[str], str],
              fill: Optional[Callable[[str], Any]], say: Callable[[str], None],
              estimate: bool = False, price: Optional[Callable[[str], Any]] = None) -> str:
    """Walk the trees (``fill`` None: only what is cached is used; with ``estimate`` the missing
    steps are counted and logged, each known level priced by ``price(source_sql)``, the usual
    estimate, and the levels above bounded at a full window in and ``max_tokens`` out each) and
    return the SELECT of one row per group."""
    group = quote(args["group_by"])
    try:
        result, keys = _walk(column, model_config, connect, audit_schema, relation_sql, args, group, fill, estimate,
                             price)
    except Exception as exc:
        if fill is not None:
            raise
        # compile / docs / show before the inputs are built: the query is still rendered (no answers
        # known), as llm_enrich renders its join; a run reads the inputs again and fills
        say(f"the answers are not looked up ({type(exc).__name__}: {redact(' '.join(str(exc).split()))[:200]}); "
            "build the model's inputs first")
        return answer_sql(relation_sql, group, args["group_by"], {}, audit_schema, column["output_col"],
                          args.get("answer_column") or "answer")
    return _log_and_select(result, keys, column, model_config, relation_sql, args, group, audit_schema, fill, say,
                           estimate)


def _walk(column, model_config, connect, audit_schema, relation_sql, args, group, fill, estimate, price):
    return run_aggregate(
        connect, relation_sql, group, args["text_sql"], args["instructions"], fingerprint=column["fingerprint"],
        audit_schema=audit_schema, json_output=column["output_col"] == "output_json", order_sql=args.get("order_by"),
        budget=int(args.get("max_input_tokens") or DEFAULT_MAX_INPUT_TOKENS), chunk_rows=args.get("chunk_rows"),
        fan_in=int(args.get("fan_in") or DEFAULT_FAN_IN), count=token_counter(model_config).count,
        fill=None if estimate else fill, price=price if estimate else None)


def _log_and_select(result, keys, column, model_config, relation_sql, args, group, audit_schema, fill, say,
                    estimate) -> str:
    groups, answered = len(result.roots), sum(1 for k in keys.values() if k is not None)
    if estimate:
        budget = int(args.get("max_input_tokens") or DEFAULT_MAX_INPUT_TOKENS)
        out_tokens = int(args.get("max_tokens") or model_config.max_tokens)
        bound_usd = result.upper_bound * (budget * model_config.cost_per_1k_input_tokens
                                          + out_tokens * model_config.cost_per_1k_output_tokens) / 1000
        say(f"estimate: {result.estimate} request(s) at most for {groups} group(s): "
            f"{result.first_level} leaf chunk(s) exactly, {result.estimate - result.first_level} above them "
            f"at most (missing per known level {result.missing_by_level}, priced above; the {result.upper_bound} "
            f"unknown steps at most ${bound_usd:.4f}: {budget} tokens in, {out_tokens} out each)")
    elif fill is not None:
        say(f"{groups} group(s), {answered} answered; tree nodes per level {result.nodes_by_level}, "
            f"requested per level {result.missing_by_level} ({result.requested} in all)")
    return answer_sql(relation_sql, group, args["group_by"], keys, audit_schema, column["output_col"],
                      args.get("answer_column") or "answer")
