"""The model's SELECT: ``join_sql`` joins the source to ``<audit>.llm_results`` on each row's key.

Also the SQL text helpers the fill shares with it: ``quote_literal`` (a value as a SQL literal,
for statements that embed user SQL and so run without parameters) and ``fresh_sql`` (the predicate
"this llm_results row is valid and unexpired", the one definition of a usable cached answer).
Pure string building: nothing here executes SQL.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..models.keys import key_sql
from .migrations import quote_ident
from .spec import ColumnSpec

__all__ = ["join_sql", "fresh_sql", "quote_literal", "key_column", "confidence_column", "distinct_prompts_sql",
           "uncached_prompts_sql", "invalidation_cutoffs", "count_and_log_hits_sql", "typed_value_sql"]


def quote_literal(value: Any) -> str:
    """A SQL literal for a string/number/bool/None (JSON values: give the JSON text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return repr(value)
    text = str(value).replace("\x00", "")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def key_column(name: str) -> str:
    """The name of the column holding ``name``'s key when ``llm_enrich(..., keep_keys=true)``."""
    return f"{name}__llm_key"


def confidence_column(name: str) -> str:
    """The companion column of a filter column ``name``: the answer's confidence (llm_results.confidence)."""
    return f"{name}__confidence"


def typed_value_sql(spec: ColumnSpec, value: str) -> str:
    """``value`` (the answer as stored: ``output_text`` / ``output_json``) as the column's SQL type: a
    filter's label as boolean; a multi-label object as ``text[]`` of its labels in the spec's label order
    (so the array is the same whatever order the model listed them in; ``{}`` when none applies)."""
    if spec.kind == "filter":
        return f"({value})::boolean"
    if spec.kind == "classify" and spec.multi_label:
        labels = "array[" + ", ".join(quote_literal(label) for label in spec.labels) + "]::text[]"
        return (f"case when ({value}) is not null then array(select __l.v from unnest({labels}) with ordinality "
                f"__l(v, i) where ({value})->'labels' @> jsonb_build_array(__l.v) order by __l.i) end")
    return value


def fresh_sql(alias: str) -> str:
    """The condition that ``alias`` (an llm_results row) may be served: valid and not expired."""
    return f"{alias}.valid and ({alias}.expires_at is null or {alias}.expires_at > now())"


def distinct_prompts_sql(source_sql: str, prompt_sql: str) -> str:
    """SELECT of the distinct prompts (``p``, text, NULL included) of ``source_sql``."""
    return f"select distinct ({prompt_sql})::text as p from {source_sql} __llm_src"


def uncached_prompts_sql(source_sql: str, spec: ColumnSpec, fingerprint: str, audit_schema: str) -> str:
    """SELECT ``k, p, invalidated_s_ago``: the distinct non-NULL prompts of ``source_sql`` with no
    usable answer in ``llm_results`` (what a fill would request, and what an estimate prices), and
    how many seconds before the statement's ``now()`` the key was last invalidated (NULL: never).
    A journal entry created at or before that moment must not be served (decision 0024); an age,
    not a timestamp, so the caller can place it on its own clock (``invalidation_cutoffs``)
    whatever the two machines' clocks say. Embeds user SQL: run it without parameters."""
    q = quote_ident(audit_schema)
    return f"""
            select c.k, c.p, extract(epoch from now() - i.invalidated_at)::float8 as invalidated_s_ago
            from (select {key_sql(fingerprint, 'd.p')} as k, d.p
                  from ({distinct_prompts_sql(source_sql, spec.prompt_sql)}) d
                  where d.p is not null) c
            left join {q}.llm_invalidations i on i.key = c.k
            where not exists (select 1 from {q}.llm_results r where r.key = c.k and {fresh_sql('r')})"""


def invalidation_cutoffs(rows: Iterable[Sequence], executed_at: float) -> dict[str, float]:
    """``{key: cutoff}`` from ``uncached_prompts_sql`` rows: the key's last invalidation on the local
    clock (epoch seconds), for the keys that have one. ``executed_at``: ``time.time()`` read once
    the statement returned, so not earlier than its ``now()``: a cutoff can only come out late
    (an entry written in those milliseconds is paid again), never early (a stale one served)."""
    return {row[0]: executed_at - float(row[2]) for row in rows if row[2] is not None}


def count_and_log_hits_sql(source_sql: str, spec: ColumnSpec, fingerprint: str, audit_schema: str,
                           run_id: str, node_id: str | None) -> str:
    """One statement: the source's rows, its distinct keys, and the keys already answered, each
    logged as a cached ``llm_calls`` row (its ``saved_cost_usd`` the stored cost); selects
    (rows, distinct keys, hits, saved cost). It embeds user SQL: values are inlined literals."""
    q = quote_ident(audit_schema)
    run, node, model, op = (quote_literal(v) for v in (run_id, node_id, spec.model, spec.kind))
    return f"""
        with d as ({distinct_prompts_sql(source_sql, spec.prompt_sql)}),
             k as (select {key_sql(fingerprint, 'd.p')} as k from d where d.p is not null),
             hits as (select r.key, r.cost_usd from k join {q}.llm_results r on r.key = k.k and {fresh_sql('r')}),
             ins as (insert into {q}.llm_calls (ts, run_id, node_id, model, operation, input_hash,
                         attempt, latency_ms, cost_usd, cached, saved_cost_usd, column_name)
                     select now(), {run}, {node}, {model}, {op}, hits.key, 0, 0, 0, true, hits.cost_usd,
                            {quote_literal(spec.name)} from hits
                     returning saved_cost_usd)
        select (select count(*) from {source_sql} __llm_src), (select count(*) from k), (select count(*) from ins),
               (select coalesce(sum(saved_cost_usd), 0) from ins)"""


def join_sql(source_sql: str, columns: Sequence[tuple[str, ColumnSpec, str]], audit_schema: str = "llm_audit",
             on_error_default: Any = None, source_columns: Sequence[str] | None = None,
             keep_keys: bool = False) -> str:
    """SELECT of the source plus one column per spec, joined to ``llm_results`` on the row's key.

    ``columns``: ``(output column name, spec, fingerprint)`` triples. complete/classify give text
    (``output_text``), extract gives jsonb (``output_json``), filter boolean plus its confidence as
    ``<name>__confidence``, multi-label classify ``text[]`` (``typed_value_sql``). Invalid or expired
    results count as
    missing (NULL). ``on_error_default``: a literal (or a ``{column name: literal}`` mapping) used
    where the prompt is not NULL but no answer exists (failed keys); for extract give JSON.
    ``source_columns``: when given, the source columns are listed explicitly and those named like an
    output column are left out (re-enriching a column replaces it); otherwise ``src.*``.
    ``keep_keys``: also output each column's key as ``<column>__llm_key`` (NULL for a NULL prompt), so
    ``join <audit>.llm_results r on r.key = t.<column>__llm_key`` explains a value.
    The keys are computed in a LATERAL subquery that sees only the source, so prompt expressions may
    use any source column unqualified, even ones named like llm_results columns (key, model, ...).
    """
    if not columns:
        raise ValueError("join_sql: give at least one (name, spec, fingerprint) column")
    q = quote_ident(audit_schema)
    names = [name for name, _, _ in columns]
    if len(set(names)) != len(names):
        raise ConfigError([f"columns: output column names must be distinct, got {names}"], context="LLM columns")
    keys = ", ".join(f"{spec.key_sql(fp)} as __llm_k{i}" for i, (_, spec, fp) in enumerate(columns))
    if source_columns is None:
        select = ["__llm_src.*"]
    else:
        replaced = set(names) | ({key_column(n) for n in names} if keep_keys else set()) \
            | {confidence_column(n) for n, spec, _ in columns if spec.kind == "filter"}
        select = [f"__llm_src.{quote_ident(c)}" for c in source_columns if c not in replaced]
    joins = []
    for i, (name, spec, _) in enumerate(columns):
        r = f"__llm_r{i}"
        value = f"{r}.{spec.output_column}"
        default = on_error_default.get(name) if isinstance(on_error_default, Mapping) else on_error_default
        if default is not None:
            if spec.multi_label and not isinstance(default, str):  # a list of labels, as the answer stores it
                literal = quote_literal(json.dumps({"labels": list(default)})) + "::jsonb"
            elif spec.is_json:
                literal = quote_literal(default if isinstance(default, str) else json.dumps(default)) + "::jsonb"
            elif spec.kind == "filter" and isinstance(default, bool):
                literal = quote_literal("true" if default else "false") + "::text"
            else:
                literal = quote_literal(default) + "::text"
            value = f"case when __llm_k.__llm_k{i} is not null then coalesce({value}, {literal}) end"
        select.append(f"{typed_value_sql(spec, value)} as {quote_ident(name)}")
        if spec.kind == "filter":
            select.append(f"{r}.confidence as {quote_ident(confidence_column(name))}")
        if keep_keys:
            select.append(f"__llm_k.__llm_k{i} as {quote_ident(key_column(name))}")
        joins.append(f"left join {q}.llm_results {r} on {r}.key = __llm_k.__llm_k{i} and {fresh_sql(r)}")
    return (f"select {', '.join(select)}\nfrom {source_sql} __llm_src\n"
            f"cross join lateral (select {keys}) __llm_k\n" + "\n".join(joins))
