"""What the Postgres side costs on top of the engine: one fill of a table vs the engine alone.

    python bench/fill.py [--rows 50000] [--distinct 10000] [--latency-ms 20] [--concurrency 64]

Side by side in one run, against one simulator process and an embedded Postgres:
  * engine alone: ``Engine.map_unordered`` over the distinct prompts (no database);
  * cold fill: ``fill_column`` over a table of ``--rows`` rows holding those prompts (distinct keys
    read with a server-side cursor, claimed, requested, written back with COPY, audit rows);
  * warm fill: the same again (zero requests: every key is in llm_results).
Prints the cold fill / engine ratio (target: close to 1.0: Postgres must not be the bottleneck).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import BufferedSink, Engine, Model, ModelInput  # noqa: E402
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column  # noqa: E402
from dbt_pg_llm.simulator import SimulatorProcess  # noqa: E402
from bench_db import bench_db  # noqa: E402


def engine_for(base_url: str, concurrency: int) -> Engine:
    return Engine([Model("sim", {"api_url": base_url, "model_version": "sim-1", "max_tokens": 64,
                                 "max_concurrency": concurrency})], sinks=[BufferedSink()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    with bench_db() as db:
        connect, schema, audit = db.connect, db.schema(), db.schema("bench_audit", create=False)
        with db.admin.cursor() as cur:
            cur.execute(f"create table {schema}.reviews as select g as id, 'Review number ' || (g %% %s) || "
                        "': sturdy, quiet, arrives on time.' as body from generate_series(1, %s) g",
                        (args.distinct, args.rows))
        with SimulatorProcess(["--latency-ms", str(args.latency_ms)]) as sim:
            engine = engine_for(sim.base_url, args.concurrency)
            engine.call("sim", ModelInput("warm-up"))
            prompts = [f"Engine-only review number {i}: sturdy, quiet, arrives on time." for i in range(args.distinct)]
            t0 = time.perf_counter()
            done = sum(1 for _, out in engine.map_unordered("sim", ((p, ModelInput(p)) for p in prompts),
                                                            window=args.concurrency * 4) if out.ok)
            engine_s = time.perf_counter() - t0
            assert done == args.distinct

            spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
            timings = {}
            for label in ("cold", "warm"):
                fill_engine = engine_for(sim.base_url, args.concurrency)  # a fresh engine: no in-process cache
                before = sim.stats()["requests"]
                t0 = time.perf_counter()
                report = fill_column(connect, fill_engine, f"{schema}.reviews", spec, audit_schema=audit,
                                     run=RunContext(run_id=f"bench-{label}-{uuid.uuid4().hex[:6]}"),
                                     window=args.concurrency * 4)
                timings[label] = time.perf_counter() - t0
                timings[label + "_requests"] = sim.stats()["requests"] - before
                assert report.errors == 0
                fill_engine.close()
            engine.close()

    result = {"rows": args.rows, "distinct": args.distinct, "latency_ms": args.latency_ms,
              "engine_s": round(engine_s, 2), "cold_fill_s": round(timings["cold"], 2),
              "cold_requests": timings["cold_requests"], "warm_fill_s": round(timings["warm"], 2),
              "warm_requests": timings["warm_requests"],
              "cold_fill_vs_engine": round(timings["cold"] / engine_s, 3),
              "fill_rows_per_s": round(args.rows / timings["cold"])}
    print(json.dumps(result))
    print(f"cold fill {timings['cold']:.1f}s = {timings['cold'] / engine_s:.2f}x the engine alone ({engine_s:.1f}s) "
          f"for {args.distinct} distinct prompts in {args.rows} rows; warm fill {timings['warm']:.2f}s with "
          f"{timings['warm_requests']} requests")
    return 0 if timings["warm_requests"] == 0 and timings["cold_requests"] == args.distinct else 1


if __name__ == "__main__":
    sys.exit(main())
