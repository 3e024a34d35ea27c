"""Memory at scale: peak RSS of a fill over 100,000 and 1,000,000 rows holding 50,000 distinct prompts.

    python bench/memory.py [--rows 100000,1000000] [--distinct 50000] [--latency-ms 5] [--concurrency 256]

Each size runs ``fill_column`` in a child process of its own (peak RSS only grows within a process)
against one embedded Postgres and one simulator process; the child reports its ``ru_maxrss``. The
distinct prompts are read with a server-side cursor, so RSS should not grow with the row count.
Also compares the simulator's ledger with the audit's tokens and cost for each fill.
Targets: <= 250 MB at both sizes, 1M within 1.1x of 100k. ONE summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid

from common import PRICE_IN, PRICE_OUT, BenchDatabase, ledger_matches, sim_args


def child(args) -> int:
    """One fill, in this process; prints a JSON line with its peak RSS."""
    import psycopg2

    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

    conninfo = json.loads(os.environ["BENCH_PG"])
    engine = Engine([Model("sim", {"api_url": os.environ["BENCH_SIM"], "model_version": "sim-1", "max_tokens": 32,
                                   "max_concurrency": args.concurrency, "cost_per_1k_input_tokens": PRICE_IN,
                                   "cost_per_1k_output_tokens": PRICE_OUT})], sinks=[BufferedSink()])
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
    t0 = time.perf_counter()
    report = fill_column(lambda: psycopg2.connect(**conninfo), engine, args.table, spec, audit_schema=args.audit,
                         run=RunContext(run_id=f"bench-memory-{uuid.uuid4().hex[:6]}"), window=args.concurrency * 4)
    wall = time.perf_counter() - t0
    engine.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"peak_rss_mb": round(peak_mb, 1), "fill_s": round(wall, 1), "errors": report.errors}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--audit", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    from dbt_pg_llm.simulator import SimulatorProcess

    results = []
    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim:
        for rows in [int(r) for r in args.rows.split(",")]:
            # a size-specific prompt text: each fill pays for its own keys
            table = db.source_table(f"rows_{rows}", rows, args.distinct, f"Review of set {rows}")
            audit = db.new_schema("bench_audit")
            sim.reset()
            env = {**os.environ, "BENCH_PG": json.dumps(db.info.connect_kwargs()), "BENCH_SIM": sim.base_url}
            done = subprocess.run([sys.executable, __file__, "--child", "--table", table, "--audit", audit,
                                   "--concurrency", str(args.concurrency)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"fill of {rows} rows failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            stats = sim.stats()
            tokens, cost = db.audit_totals(audit)
            row.update(rows=rows, requests=stats["requests"], audit_tokens=tokens, audit_cost_usd=round(cost, 6),
                       ledger_tokens=stats["prompt_tokens"] + stats["completion_tokens"],
                       ledger_cost_usd=round(stats["cost_usd"], 6), ledger_ok=ledger_matches(stats, tokens, cost))
            results.append(row)
            print(json.dumps(row), flush=True)
    ledger_ok = all(r["ledger_ok"] for r in results)
    growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    ok = ledger_ok and growth <= 1.1 and all(r["peak_rss_mb"] <= 250 and r["errors"] == 0 for r in results)
    print(f"memory ({args.distinct} distinct prompts): "
          + ", ".join(f"{r['rows']:,} rows {r['peak_rss_mb']:.0f} MB peak RSS ({r['requests']} requests)"
                      for r in results)
          + f"; largest / smallest {growth:.2f}x; ledger vs audit tokens/cost {'equal' if ledger_ok else 'DIFFERENT'}"
          + f"; targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
