"""Rough edges a new user hit (issue 18, part 3), below dbt: real Postgres, real HTTP to the simulator."""
from __future__ import annotations

import logging
import uuid

import pytest

from dbt_pg_llm import Engine, MemoryBackend, Model, ResultCache, estimate_cost
from dbt_pg_llm.models.model_io import ModelInput
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_budget_line_says_spent_reserved_and_cap_and_the_request_that_did_not_fit(db, pg_conn, simulator_factory):
    """Was "max_cost_usd 0.0020 reached (run has spent 0.0000)": a cap reached with nothing spent
    read as a contradiction. The request's own worst case did not fit; the line says so."""
    sim = simulator_factory(SimulatorConfig(cost_per_1k_input=0.5, cost_per_1k_output=1.5))
    connect, schema, audit = db
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".src as select \'review \' || i || \' was fine\' as body '
                    'from generate_series(1, 3) i')
    model = Model("sim", {"api_url": sim.base_url, "model_version": "sim-small", "max_tokens": 64,
                          "cost_per_1k_input_tokens": 0.5, "cost_per_1k_output_tokens": 1.5,
                          "retry": {"max_retries": 0}})
    engine = Engine([model], cache=ResultCache(MemoryBackend()))
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
    worst = estimate_cost(model.config, ModelInput("review 1 was fine", max_tokens=64))
    cap = worst * 0.5  # not even one request fits
    # a handler of its own: dbt tests earlier in the process bridge this logger to dbt's (no propagation)
    logger, seen = logging.getLogger("dbt_pg_llm"), _Lines()
    logger.addHandler(seen)
    try:
        rep = fill_column(connect, engine, f'"{schema}".src', spec, audit_schema=audit,
                          run=RunContext(uuid.uuid4().hex, "model.p.m"), max_cost_usd=cap)
    finally:
        logger.removeHandler(seen)
        engine.close()
    assert rep.budget_skipped == 3 and sim.stats()["requests"] == 0
    lines = [line for line in seen.lines if "max_cost_usd_per_run" in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"${cap:.4f} reached: the run has spent $0.0000 and requests in flight hold $0.0000" in line
    assert "its worst-case cost $" in line and "does not fit" in line and "model.p.m" in line


SCRIPT = """
import sys
from dbt_pg_llm import Model, ModelInput
model = Model("gpt", {"api_url": sys.argv[1], "api_key": "sk-test-0123456789", "model_version": "sim-small"})
out = model.call(ModelInput("Summarize: great kettle!"))
print(out.ok, out.error_message)
if sys.argv[2] == "with":
    with Model("b", {"api_url": sys.argv[1], "api_key": "sk-test-0123456789", "model_version": "sim-small"}) as m:
        print(m.call(ModelInput("Fine.")).ok)
"""


@pytest.mark.parametrize("how", ["plain", "with"])
def test_model_call_from_a_plain_script_leaves_no_unclosed_connector(simulator, tmp_path, how):
    """The README's engine example, as a script: it printed "Unclosed connector ... connector:
    <aiohttp.connector.TCPConnector ...>" at exit (the session of the shared loop was never closed)."""
    import subprocess
    import sys

    script = tmp_path / "call.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), simulator.base_url, how],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "True", done.stdout
    assert "Unclosed" not in done.stderr and "connector" not in done.stderr, done.stderr
