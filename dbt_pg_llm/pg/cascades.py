"""Evaluations and cascade calibrations in the audit schema (migration 19, decision 0033).

* ``store_evaluations`` / ``latest_evaluations``: ``llm_evaluations`` rows (evaluation.py);
  ``scores_from_evaluations``: a route strategy's ``scores`` ({model: {task: accuracy}}) from the
  latest evaluation of each model and task, instead of hand-written numbers.
* ``store_calibration`` / ``load_calibration``: a guaranteed cascade's sample, thresholds and measured
  agreement (cascade_calibration.py), by strategy and basis, so a rerun with the same models and
  prompt reuses them (``calibrated``: load, else calibrate and store).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError
from ..models.cascade_calibration import Calibration, apply_calibration, calibrate, calibration_basis
from ..models.strategy import SCORES_FROM_EVALUATIONS
from .join import distinct_prompts_sql
from .migrations import ensure_migrated, qualified, transaction

if TYPE_CHECKING:
    from ..models.engine import Engine
    from ..models.evaluation import EvaluationRow
    from ..models.model_io import ModelInput

__all__ = ["store_evaluations", "latest_evaluations", "scores_from_evaluations", "store_calibration",
           "load_calibration", "calibrated", "calibrations", "prepare_cascade",
           "prepare_strategy"]

log = logging.getLogger("dbt_pg_llm")

_EVAL_COLUMNS = ("node_id", "column_name", "golden", "model", "strategy", "task", "rows_compared", "accuracy",
                 "cost_per_row", "latency_ms", "calibration")


def store_evaluations(conn, schema: str, rows: Sequence["EvaluationRow"]) -> None:
    ensure_migrated(conn, schema)
    sql = (f"insert into {qualified(schema, 'llm_evaluations')} ({', '.join(_EVAL_COLUMNS)}) "
           f"values ({', '.join(['%s'] * len(_EVAL_COLUMNS))})")
    with transaction(conn), conn.cursor() as cur:
        for row in rows:
            values = asdict(row)
            values["calibration"] = json.dumps(values["calibration"])
            cur.execute(sql, [values[c] for c in _EVAL_COLUMNS])


def latest_evaluations(conn, schema: str) -> list[dict[str, Any]]:
    """The latest evaluation of each (model, node, column, golden), newest first."""
    with conn.cursor() as cur:
        cur.execute(f"""select distinct on (model, node_id, column_name, golden) {', '.join(_EVAL_COLUMNS)},
                               evaluated_at
                          from {qualified(schema, 'llm_evaluations')}
                         order by model, node_id, column_name, golden, evaluated_at desc, id desc""")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return sorted(rows, key=lambda r: r["evaluated_at"], reverse=True)


def scores_from_evaluations(conn, schema: str, models: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """{model: {task: accuracy}} from each model's latest evaluation per task (``scores: from_evaluations``)."""
    with conn.cursor() as cur:
        cur.execute(f"""select distinct on (model, task) model, task, accuracy
                          from {qualified(schema, 'llm_evaluations')}
                         where accuracy is not null and task is not null and strategy is null
                         order by model, task, evaluated_at desc, id desc""")
        out: dict[str, dict[str, float]] = {}
        for model, task, accuracy in cur.fetchall():
            if models is None or model in models:
                out.setdefault(model, {})[task] = float(accuracy)
    return out


def store_calibration(conn, schema: str, calibration: Calibration) -> None:
    ensure_migrated(conn, schema)
    row = calibration.as_row()
    cols = list(row)
    values = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in row.values()]
    with transaction(conn), conn.cursor() as cur:
        cur.execute(f"insert into {qualified(schema, 'llm_cascade_calibrations')} ({', '.join(cols)}, created_at) "
                    f"values ({', '.join(['%s'] * len(cols))}, now()) on conflict (strategy, basis) do update set "
                    + ", ".join(f"{c} = excluded.{c}" for c in cols[2:]) + ", created_at = now()", values)


def load_calibration(conn, schema: str, strategy: str, basis: str) -> dict[str, Any] | None:
    ensure_migrated(conn, schema)
    with conn.cursor() as cur:
        cur.execute(f"select thresholds, measured_agreement, agreement_lower_bound, oracle_share, sample_size, "
                    f"target_accuracy, failure_probability, models "
                    f"from {qualified(schema, 'llm_cascade_calibrations')} where strategy = %s and basis = %s",
                    (strategy, basis))
        got = cur.fetchone()
    if got is None:
        return None
    names = ("thresholds", "measured_agreement", "agreement_lower_bound", "oracle_share", "sample_size",
             "target_accuracy", "failure_probability", "models")
    return dict(zip(names, got))


def calibrations(conn, schema: str) -> list[dict[str, Any]]:
    """Every stored calibration (the report's table), newest first, without the sample itself."""
    with conn.cursor() as cur:
        cur.execute(f"""select strategy, created_at, models, target_accuracy, failure_probability, sample_size,
                               thresholds, measured_agreement, agreement_lower_bound, oracle_share, sample_cost_usd
                          from {qualified(schema, 'llm_cascade_calibrations')} order by created_at desc""")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def calibrated(conn, schema: str, engine: "Engine", name: str, inputs: Sequence["ModelInput"], *,
               seed: int = 0, **call_kwargs: Any) -> tuple[dict[str, Any], bool]:
    """Make the guaranteed cascade ``name`` ready for ``inputs``: reuse the stored calibration of the
    same basis (models and prompt unchanged), else calibrate on a sample and store it. Returns
    (the stored row, whether it was reused)."""
    basis = calibration_basis(engine, name, inputs[0])
    stored = load_calibration(conn, schema, name, basis)
    reused = stored is not None
    if not reused:
        store_calibration(conn, schema, calibrate(engine, name, inputs, seed=seed, **call_kwargs))
        stored = load_calibration(conn, schema, name, basis)
    apply_calibration(engine, name, stored["thresholds"])
    return stored, reused


def prepare_cascade(conn, schema: str, engine: "Engine", spec, source_sql: str,
                    **call_kwargs: Any) -> dict[str, Any] | None:
    """Before a fill of ``spec`` (a ColumnSpec): if its model is a guaranteed cascade with no thresholds
    yet, reuse the stored calibration of the same basis or calibrate on a uniform random sample of the
    column's distinct prompts (ordered by md5: a hash independent of the data, and the same sample
    for the same prompts, so a rerun's calibration is reproducible) and store it; the fill then runs the
    rest through the cascade. ``call_kwargs``: the fill's ``context`` and ``spend_limit``. If the sample
    cannot be calibrated (e.g. the cap refused the oracle), the cascade stays uncalibrated: the oracle
    answers every key, which meets any target. Returns the calibration row, or None."""
    strategy = getattr(engine.registry.get(spec.model), "strategy", None)
    if strategy is None or strategy.kind != "cascade" or strategy.target_accuracy is None \
            or strategy.thresholds is not None:
        return None
    with conn.cursor() as cur:  # embeds the model's SQL, as the fill's own statements do
        cur.execute(f"select d.p from ({distinct_prompts_sql(source_sql, spec.prompt_sql)}) d "
                    f"where d.p is not null order by md5(d.p) limit {int(strategy.sample_size)}")
        prompts = [row[0] for row in cur.fetchall()]
    if not conn.autocommit:
        conn.commit()
    if not prompts:
        return None
    try:
        stored, _ = calibrated(conn, schema, engine, spec.model, [spec.model_input(p) for p in prompts],
                               **call_kwargs)
    except ConfigError as exc:
        log.warning("%s: not calibrated (%s); the oracle answers every key", spec.model, exc)
        return None
    return stored


def prepare_strategy(conn, schema: str, engine: "Engine", spec, source_sql: str,
                     **call_kwargs: Any) -> dict[str, Any] | None:
    """Before a fill: a guaranteed cascade is calibrated (``prepare_cascade``); a route with
    ``scores: from_evaluations`` takes each registered model's latest measured accuracy per task
    from ``llm_evaluations`` as its scores. Returns what was applied (None: nothing to do)."""
    model = engine.registry.get(spec.model)
    strategy = getattr(model, "strategy", None)
    if strategy is not None and strategy.kind == "route" and strategy.scores_source == SCORES_FROM_EVALUATIONS:
        ensure_migrated(conn, schema)
        real = [name for name in engine.registry.names() if getattr(engine.registry.get(name), "strategy", None) is None]
        scores = scores_from_evaluations(conn, schema, real)
        if not conn.autocommit:
            conn.commit()
        model.strategy = replace(strategy, scores=scores)
        return {"scores": scores}
    return prepare_cascade(conn, schema, engine, spec, source_sql, **call_kwargs)
