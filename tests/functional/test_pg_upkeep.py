"""Alerts raised into llm_alerts from the engine's metrics, once per run, model and type."""
import httpx

from dbt_pg_llm import Engine, Model, ModelInput
from dbt_pg_llm.models.alerts import AlertThresholds
from dbt_pg_llm.pg import ensure_migrated
from dbt_pg_llm.pg.upkeep import raise_alerts


def test_alerts_written_once_per_run(pg_conn):
    schema = pg_conn.schema + "_audit"
    ensure_migrated(pg_conn, schema)
    failing = httpx.MockTransport(lambda r: httpx.Response(503, json={"error": {"message": "busy"}}))
    engine = Engine()
    engine.register(Model("flaky", {"api_url": "http://x/v1", "model_version": "v", "retry": {"max_retries": 0}},
                          transport=failing))
    for i in range(6):
        assert not engine.call("flaky", ModelInput(f"p{i}")).ok
    thresholds = AlertThresholds(min_requests=5)
    first = raise_alerts(pg_conn, schema, engine, "run-1", thresholds)
    assert {a.type for a in first} == {"error_rate", "circuit_open"}
    assert raise_alerts(pg_conn, schema, engine, "run-1", thresholds) == []  # already raised for this run
    assert len(raise_alerts(pg_conn, schema, engine, "run-2", thresholds)) == 2
    with pg_conn.cursor() as cur:
        cur.execute(f"select run_id, model, alert_type, severity from {schema}.llm_alerts order by 1, 3")
        rows = cur.fetchall()
        cur.execute(f"drop schema {schema} cascade")
    assert rows == [("run-1", "flaky", "circuit_open", "critical"), ("run-1", "flaky", "error_rate", "critical"),
                    ("run-2", "flaky", "circuit_open", "critical"), ("run-2", "flaky", "error_rate", "critical")]
