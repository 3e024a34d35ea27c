"""``dbt run-operation pg_llm.evaluate`` (issue 21.2, decision 0033): an LLM column against a golden relation.

The macro finds the model node and the column's spec in its meta (``pg_llm:<column>``, recorded by
``llm_enrich``); this asks each evaluated model (the column's own by default, or ``models``) for the
golden rows' prompts (cached and audited like any call: a re-evaluation of answered rows pays
nothing), writes one ``llm_evaluations`` row per model (``dbt_pg_llm.models.evaluation``) and returns a
text table. The prompt expression is evaluated over the model's table (which keeps the source's
columns) and matched to the golden relation on ``key``.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from dbt_common.exceptions import DbtRuntimeError

__all__ = ["evaluate_column"]


def _golden_rows(conn, relation_sql: str, golden_sql: str, prompt_sql: str, key: str, golden_column: str) -> list:
    from dbt_pg_llm.pg.migrations import quote_ident

    k, g = quote_ident(key), quote_ident(golden_column)
    with conn.cursor() as cur:  # embeds the model's prompt SQL, as a fill does
        cur.execute(f"select s.p, gold.{g}::text from (select ({prompt_sql})::text as p, t.{k} as __k "
                    f"from {relation_sql} t) s join {golden_sql} gold on gold.{k} = s.__k "
                    f"where s.p is not null and gold.{g} is not null order by s.__k")
        return cur.fetchall()


def evaluate_column(adapter, engine, node_id: str, column: str, meta: Dict[str, Any], relation_sql: str,
                    golden_sql: str, golden_name: str, key: str, golden_column: str,
                    models: Optional[List[str]]) -> str:
    from dbt_pg_llm.errors import PgLlmError, redact
    from dbt_pg_llm.models.evaluation import evaluate
    from dbt_pg_llm.pg.cascades import store_evaluations

    spec = dict(meta.get("spec") or {})
    if meta.get("mode") is not None and "mode" not in spec:
        spec["mode"] = meta["mode"]
    column_spec = adapter.column_spec(spec, meta.get("default_model"), column)
    names = list(models or [column_spec.model])
    schema = adapter.llm_settings().audit_schema
    conn = adapter.llm_credentials.connect_autocommit()
    try:
        try:
            rows = _golden_rows(conn, relation_sql, golden_sql, column_spec.prompt_sql, key, golden_column)
        except Exception as exc:  # a missing key or golden column: say which and how to name it
            raise DbtRuntimeError(f"pg_llm.evaluate {node_id}.{column}: reading {golden_name} matched on "
                                  f"{key!r} failed: {redact(str(exc)).strip()}; pass key: <column present in both> "
                                  "and golden_column: <the expected values' column>") from None
        if column_spec.kind == "extract":
            golden = [json.loads(v) for _, v in rows]
        else:
            golden = [v for _, v in rows]
        inputs = [column_spec.model_input(p) for p, _ in rows]
        try:
            results = evaluate(engine, names, inputs, golden, node_id=node_id, column=column, golden_name=golden_name)
        except PgLlmError as exc:
            raise DbtRuntimeError(f"pg_llm.evaluate: {redact(str(exc))}") from None
        store_evaluations(conn, schema, results)
    finally:
        conn.close()
    lines = [f"pg_llm.evaluate {node_id}.{column} against {golden_name} ({len(rows)} rows), stored in "
             f"{schema}.llm_evaluations:"]
    for r in results:
        cost = "" if r.cost_per_row is None else f"${r.cost_per_row:.6f}/row"
        ms = "" if r.latency_ms is None else f"{r.latency_ms:.0f} ms"
        lines.append(f"  {r.model}: accuracy {r.accuracy:.1%}, {cost}, {ms}; by confidence decile: "
                     + (", ".join(f"{d['decile'] / 10:.1f}+ {d['accuracy']:.0%} ({d['rows']})" for d in r.calibration)
                        or "no confidences"))
    return "\n".join(lines)
