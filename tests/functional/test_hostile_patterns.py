"""Issue 16 §4: one data row must not freeze a run. An ``extract`` schema with ``pattern: "^(a+)+$"``
and a row of 'a's ending in 'b' (the simulator echoes the row into the answer) froze the filling
process for seconds, doubling per character, and its claim heartbeat went stale: a live run looked
dead to the other runs. The fill runs in a process of its own; this process watches its claims'
``heartbeat_at`` in Postgres the whole time."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time

import pytest
from test_pg_enrich import make_source, q

from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

SCHEMA = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}, "required": ["s"]}
HOSTILE = "a" * 27 + "b"  # Python's re: ~8 s here (43 s at 30 'a'); RE2: microseconds

FILLER = textwrap.dedent("""
    import json, sys, time
    import psycopg2
    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

    args = json.loads(sys.argv[1])
    engine = Engine([Model("sim", {"api_url": args["api_url"], "model_version": "sim-small",
                                   "api_key": "sk-test-0123456789", "retry": {"max_retries": 0},
                                   "max_concurrency": 4, "timeout_ms": 30000})], sinks=[BufferedSink()])
    spec = ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "body", "schema": args["schema"]},
                                default_model="sim")
    started = time.monotonic()
    report = fill_column(lambda: psycopg2.connect(**args["pg"]), engine, args["source"], spec,
                         audit_schema=args["audit"], run=RunContext("hostile-run", "model.p.hostile"),
                         claim_timeout_s=2)
    print(json.dumps({"seconds": time.monotonic() - started, "done": report.requests_done,
                      "errors": report.errors}), flush=True)
    engine.close()
""")


def test_a_hostile_row_neither_stalls_the_fill_nor_its_claim_heartbeat(db, pg, pg_conn, simulator_factory,
                                                                        tmp_path):
    connect, schema, audit = db
    rows = [HOSTILE] + ["a" * k for k in range(1, 24)]
    source = make_source(pg_conn, schema, rows)
    sim = simulator_factory(SimulatorConfig(latency_ms=300))  # 24 rows, 4 at a time: ~2 s of requests
    script = tmp_path / "filler.py"
    script.write_text(FILLER)
    args = {"api_url": sim.base_url, "pg": pg.connect_kwargs(), "source": source, "audit": audit, "schema": SCHEMA}
    child = subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    stalest, samples = 0.0, 0
    try:
        while child.poll() is None:  # the age of the child's freshest beat, as another run would see it
            try:
                age = q(pg_conn, f'select extract(epoch from now() - max(greatest(heartbeat_at, claimed_at))) '
                                 f'from "{audit}".llm_claims where run_id = %s', ("hostile-run",))[0][0]
            except Exception:  # the child has not created the audit schema yet (pg_conn is autocommit)
                age = None
            if age is not None:
                stalest, samples = max(stalest, float(age)), samples + 1
            time.sleep(0.05)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    print(f"\nfill of {len(rows)} rows with a hostile one: {report['seconds']:.2f} s; "
          f"stalest claim heartbeat seen {stalest:.2f} s over {samples} samples (beats every 0.5 s)")
    assert samples >= 10  # the claims were watched for a while (>= 0.5 s)
    assert stalest < 1.5, "the claim heartbeat went stale while the fill was alive"
    assert report["done"] == len(rows)
    # the hostile row's answer does not match: invalid_output; every other row as the pattern says
    errors = dict(q(pg_conn, f'select e.message, e.error_kind from "{audit}".llm_errors e'))
    hostile = [m for m in errors if HOSTILE in m]
    assert len(hostile) == 1 and errors[hostile[0]] == "invalid_output"
    answers = [r[0]["s"] for r in q(pg_conn, f'select output_json from "{audit}".llm_results')]
    assert all(re.fullmatch("a+", a) for a in answers)
    assert len(answers) + len(errors) == len(rows) and report["errors"] == len(errors)
