"""Does ``max_cost_usd_per_run`` hold? One fill per cap, and what the simulator's ledger billed.

    python bench/spend_cap.py [--keys 4000] [--latency-ms 50] [--window 256] [--caps 0.001 0.05 0.5]

Against an embedded Postgres and the simulator, priced like gpt-4o-mini ($0.00015 / $0.0006 per 1k
input / output tokens, the example profile's prices), max_tokens 200, ``--window`` requests in
flight: for each cap, a fresh fill of ``--keys`` distinct prompts with ``max_cost_usd=cap``, then
one line ``cap $X billed $Y ...`` from the ledger. "billed" must never exceed "cap".
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import BufferedSink, Engine, Model  # noqa: E402
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column  # noqa: E402
from dbt_pg_llm.simulator import SimulatorConfig, SimulatorServer  # noqa: E402
from bench_db import bench_db  # noqa: E402

PRICE_IN, PRICE_OUT = 0.00015, 0.0006


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=4000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--caps", type=float, nargs="+", default=[0.001, 0.05, 0.5])
    args = parser.parse_args(argv)

    over = 0
    with bench_db() as db:
        connect, schema = db.connect, db.schema()
        with db.admin.cursor() as cur:
            cur.execute(f"create table {schema}.reviews as select g as id, 'Review number ' || g || "
                        "': sturdy, quiet, arrives on time, but the lid squeaks a little.' as body "
                        "from generate_series(1, %s) g", (args.keys,))
        config = SimulatorConfig(latency_ms=args.latency_ms, cost_per_1k_input=PRICE_IN, cost_per_1k_output=PRICE_OUT)
        spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
        with SimulatorServer(config) as sim:
            for cap in args.caps:
                audit = db.schema("bench_audit", create=False)
                engine = Engine([Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 200,
                                               "max_concurrency": args.window, "cost_per_1k_input_tokens": PRICE_IN,
                                               "cost_per_1k_output_tokens": PRICE_OUT})], sinks=[BufferedSink()])
                sim.reset()
                try:
                    report = fill_column(connect, engine, f"{schema}.reviews", spec, audit_schema=audit,
                                         run=RunContext(run_id=f"bench-{uuid.uuid4().hex[:6]}"), window=args.window,
                                         max_cost_usd=cap)
                finally:
                    engine.close()
                ledger = sim.stats()
                verdict = "OK" if ledger["cost_usd"] <= cap else "OVER"
                over += verdict == "OVER"
                print(f"cap ${cap:.6f} billed ${ledger['cost_usd']:.6f} ({verdict}; {ledger['requests']} requests of "
                      f"{args.keys} keys, {getattr(report, 'budget_skipped', report.errors)} skipped, "
                      f"max in flight {ledger['max_in_flight']})", flush=True)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
