"""One self-contained HTML page of charts over the audit schema (``python -m dbt_pg_llm report --html``).

Charts by plotly (``pip install 'dbt-pg-llm[report]'``) with plotly.js inlined once in the page, so
it opens offline, from a file or a mail attachment: cost per day per model, latency distribution,
error kinds over time, cache hit rate per day, top costly nodes; and the per-model table of the
``pg_llm.report`` run-operation. The data is read by ``pg.usage_report`` (SQL, read-only).
"""
from __future__ import annotations

import html
from datetime import datetime, timezone

from ..pg.usage_report import ModelUsage, daily_series, error_kind_series, latency_samples, top_nodes, usage_by_model
from .quality_report import quality_tables_html

__all__ = ["render_report_html", "CHART_IDS"]

CHART_IDS = ("cost_per_day", "latency_distribution", "error_kinds", "cache_hit_rate", "top_nodes")
_TITLES = {
    "cost_per_day": "Cost per day and model (USD)",
    "latency_distribution": "Latency distribution of requests (ms)",
    "error_kinds": "Failed requests per day, by error kind",
    "cache_hit_rate": "Cache hit rate per day and model",
    "top_nodes": "Top costly dbt nodes (USD)",
}
_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } .sub { color: #666; margin-bottom: 18px; }
table { border-collapse: collapse; margin: 12px 0 24px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child, td.text { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }
.chart { border: 1px solid #eee; border-radius: 6px; padding: 4px; }
"""


def _plotly():
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError("the HTML report draws its charts with plotly: pip install 'dbt-pg-llm[report]'") from None
    return go


def _figures(conn, schema: str, days: float) -> dict:
    go = _plotly()
    daily = daily_series(conn, schema, days)
    models = sorted({d["model"] for d in daily})
    figs = {name: go.Figure() for name in CHART_IDS}
    for model in models:
        rows = [d for d in daily if d["model"] == model]
        figs["cost_per_day"].add_bar(x=[d["day"] for d in rows], y=[d["cost_usd"] for d in rows], name=model)
        rated = [d for d in rows if d["cache_hit_rate"] is not None]
        figs["cache_hit_rate"].add_scatter(x=[d["day"] for d in rated], y=[d["cache_hit_rate"] for d in rated],
                                           mode="lines+markers", name=model)
    figs["cost_per_day"].update_layout(barmode="stack", yaxis={"title": "USD", "tickformat": "$,.4f"},
                                       xaxis_type="category")
    figs["cache_hit_rate"].update_layout(yaxis={"tickformat": ".0%", "range": [0, 1.05]}, xaxis_type="category")

    for model, values in sorted(latency_samples(conn, schema, days).items()):
        figs["latency_distribution"].add_histogram(x=values, name=model, opacity=0.7, nbinsx=40)
    figs["latency_distribution"].update_layout(barmode="overlay", xaxis_title="ms", yaxis_title="requests")

    errors = error_kind_series(conn, schema, days)
    for kind in sorted({e["error_kind"] for e in errors}):
        rows = [e for e in errors if e["error_kind"] == kind]
        figs["error_kinds"].add_bar(x=[e["day"] for e in rows], y=[e["errors"] for e in rows], name=kind)
    figs["error_kinds"].update_layout(barmode="stack", yaxis_title="failed requests", xaxis_type="category")

    nodes = list(reversed(top_nodes(conn, schema, days)))
    figs["top_nodes"].add_bar(x=[n["cost_usd"] for n in nodes], y=[n["node_id"] for n in nodes], orientation="h",
                              name="paid", customdata=[[n["requests"], n["saved_cost_usd"]] for n in nodes],
                              hovertemplate="%{y}<br>$%{x:.4f} paid, %{customdata[0]} requests, "
                                            "$%{customdata[1]:.4f} saved<extra></extra>")
    figs["top_nodes"].update_layout(xaxis={"title": "USD", "tickformat": "$,.4f"}, margin={"l": 260})
    for name, fig in figs.items():
        # a legend even for one model or kind: it names what the bars are
        fig.update_layout(title=_TITLES[name], template="plotly_white", height=380, showlegend=name != "top_nodes")
        if not fig.data:
            fig.add_annotation(text="no data in this window", showarrow=False, x=0.5, y=0.5,
                               xref="paper", yref="paper", font={"size": 16, "color": "#888"})
    return figs


_TEXT_COLUMNS = (0, 3, 14)  # model, errors by kind, open alerts: left-aligned


def _table(usage: list[ModelUsage]) -> str:
    head = ("model", "requests", "errors", "errors by kind", "p50 ms", "p95 ms", "tokens", "cost USD",
            "cache hits", "hit rate", "saved USD", "prompt-cached input", "prompt cache saved USD",
            "open dead letters", "open alerts")
    rows = []
    for u in usage:
        rate = "" if u.cache_hit_rate is None else f"{u.cache_hit_rate:.1%}"
        cells = (u.model, f"{u.requests:,}", f"{u.errors:,}",
                 ", ".join(f"{k}={n}" for k, n in u.errors_by_kind.items()),
                 "" if u.p50_latency_ms is None else f"{u.p50_latency_ms:,.0f}",
                 "" if u.p95_latency_ms is None else f"{u.p95_latency_ms:,.0f}",
                 f"{u.tokens:,}", f"{u.cost_usd:,.4f}", f"{u.cache_hits:,}", rate, f"{u.saved_cost_usd:,.4f}",
                 "" if u.cached_share is None else f"{u.cached_share:.1%}", f"{u.prompt_cache_saved_usd:,.4f}",
                 f"{u.open_dead_letters:,}", "<br>".join(html.escape(a) for a in u.open_alerts) or "none")
        escaped = [html.escape(c) for c in cells[:-1]] + [cells[-1]]  # the alerts are escaped above
        rows.append("<tr>" + "".join(f'<td class="text">{c}</td>' if i in _TEXT_COLUMNS else f"<td>{c}</td>"
                                     for i, c in enumerate(escaped)) + "</tr>")
    body = "".join(rows) or f'<tr><td colspan="{len(head)}">no LLM calls in this window</td></tr>'
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + body + "</table>"


def render_report_html(conn, schema: str, days: float = 30, *, title: str = "dbt-pg-llm report") -> str:
    """The whole page (plotly.js inlined once: about 4.5 MB)."""
    usage = usage_by_model(conn, schema, days)
    figs = _figures(conn, schema, days)
    config = {"displaylogo": False, "responsive": True}
    charts = []
    for i, name in enumerate(CHART_IDS):
        div = figs[name].to_html(full_html=False, include_plotlyjs=(i == 0), div_id=name, config=config)
        charts.append(f'<div class="chart">{div}</div>')
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>"
            f'<div class="sub">last {days:g} day(s) of {html.escape(schema)}.llm_calls, llm_errors and llm_alerts; '
            f"generated {now}</div>\n{_table(usage)}\n<div class=\"grid\">{''.join(charts)}</div>\n"
            f"{quality_tables_html(conn, schema)}\n</body></html>\n")
