"""The HTML report's quality section (issue 21.2/21.3): evaluations and guaranteed-cascade calibrations.

Two tables under the usage charts of ``html_report.render_report_html``: the latest evaluation of each
model against each golden relation (accuracy, cost per row, latency, accuracy by confidence decile),
and every stored cascade calibration (target, thresholds, measured agreement and its bound, the
oracle's share, the sample's cost). Read by ``pg.cascades``; empty tables say so.
"""
from __future__ import annotations

import html

from ..pg.cascades import calibrations, latest_evaluations
from ..pg.migrations import qualified

__all__ = ["quality_tables_html"]


def _exists(conn, schema: str, table: str) -> bool:
    """An audit schema older than migration 19 has neither table: the report still renders."""
    with conn.cursor() as cur:
        cur.execute("select to_regclass(%s) is not null", (qualified(schema, table),))
        return bool(cur.fetchone()[0])


def _table(title: str, head: tuple[str, ...], rows: list[tuple], empty: str) -> str:
    body = "".join("<tr>" + "".join(f'<td class="text">{html.escape(str(c))}</td>' if i == 0 else
                                    f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows) or f'<tr><td colspan="{len(head)}">{html.escape(empty)}</td></tr>'
    return (f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr>" + body + "</table>")


def _pct(value) -> str:
    return "" if value is None else f"{float(value):.1%}"


def quality_tables_html(conn, schema: str) -> str:
    evaluations = latest_evaluations(conn, schema) if _exists(conn, schema, "llm_evaluations") else []
    cascades = calibrations(conn, schema) if _exists(conn, schema, "llm_cascade_calibrations") else []
    eval_rows = [(e["model"], e["strategy"] or "", f'{e["node_id"]}.{e["column_name"]}', e["golden"],
                  e["rows_compared"], _pct(e["accuracy"]),
                  "" if e["cost_per_row"] is None else f'{float(e["cost_per_row"]):.6f}',
                  "" if e["latency_ms"] is None else f'{float(e["latency_ms"]):,.0f}',
                  " ".join(f'{d["decile"] / 10:.1f}+: {d["accuracy"]:.0%} ({d["rows"]})' for d in e["calibration"]),
                  e["evaluated_at"].strftime("%Y-%m-%d %H:%M")) for e in evaluations]
    cascade_rows = [(c["strategy"], " > ".join(c["models"]), _pct(c["target_accuracy"]),
                     f'{float(c["failure_probability"]):g}', c["sample_size"],
                     ", ".join("never" if t > 1 else f"{t:.2f}" for t in c["thresholds"]),
                     _pct(c["measured_agreement"]), _pct(c["agreement_lower_bound"]), _pct(c["oracle_share"]),
                     f'{float(c["sample_cost_usd"]):.4f}', c["created_at"].strftime("%Y-%m-%d %H:%M"))
                    for c in cascades]
    return (_table("Evaluations against golden sets (latest per model)",
                   ("model", "strategy", "column", "golden", "rows", "accuracy", "cost per row USD", "mean ms",
                    "accuracy by confidence decile", "evaluated"), eval_rows, "no evaluation stored")
            + _table("Guaranteed cascades: calibrations",
                     ("strategy", "models (oracle last)", "target", "failure probability", "sample", "thresholds",
                      "measured agreement", "agreement bound", "oracle share", "sample cost USD", "calibrated"),
                     cascade_rows, "no guaranteed cascade calibrated"))
