"""A big backfill through the provider batch API vs the normal path, side by side.

    python bench/batch_backfill.py [--keys 100000] [--latency-ms 5] [--concurrency 64]

Against one simulator process (priced like gpt-4o-mini: $0.15 / $0.60 per 1M tokens) and an
embedded Postgres, over a table of ``--keys`` distinct prompts, classified:
  * normal path: ``fill_column`` (one HTTP request per key, list price);
  * batch path: ``fill_column_batched`` with ``batch: {enabled: true}``: run 1 submits the keys as
    provider-sized batches (OpenAI: at most 50,000 requests / 200 MB per file), run 2 collects them.
Prints the HTTP requests, batches, cost and wall time of both, and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import BufferedSink, Engine, Model, MemoryBackend, ResultCache  # noqa: E402
from dbt_pg_llm.embedded_pg import EmbeddedPostgres  # noqa: E402
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column  # noqa: E402
from dbt_pg_llm.pg.batch_fill import fill_column_batched  # noqa: E402
from dbt_pg_llm.simulator import SimulatorProcess  # noqa: E402

COST_IN, COST_OUT = 0.00015, 0.0006  # $ per 1k tokens


def engine_for(base_url: str, concurrency: int) -> Engine:
    return Engine([Model("sim", {"api_url": base_url, "model_version": "sim-1", "max_tokens": 16,
                                 "max_concurrency": concurrency, "cost_per_1k_input_tokens": COST_IN,
                                 "cost_per_1k_output_tokens": COST_OUT,
                                 "batch": {"enabled": True, "min_keys": 1000, "max_wait_s": 0}})],
                  cache=ResultCache(MemoryBackend()), sinks=[BufferedSink()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)

    import psycopg2

    server = EmbeddedPostgres()
    info = server.start()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    audits = {"normal": f"bench_audit_n_{uuid.uuid4().hex[:6]}", "batch": f"bench_audit_b_{uuid.uuid4().hex[:6]}"}

    def connect():
        return psycopg2.connect(**info.connect_kwargs())

    admin = connect()
    admin.autocommit = True
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body",
                                 "labels": ["positive", "negative", "neutral"]}, default_model="sim")
    out: dict = {"keys": args.keys}
    try:
        with admin.cursor() as cur:
            cur.execute(f"create schema {schema}")
            cur.execute(f"create table {schema}.reviews as select g as id, 'Review number ' || g || "
                        "': sturdy, quiet, arrives on time; would buy again.' as body from generate_series(1, %s) g",
                        (args.keys,))
        source = f"{schema}.reviews"
        with SimulatorProcess(["--latency-ms", str(args.latency_ms), "--cost-per-1k-input", str(COST_IN),
                               "--cost-per-1k-output", str(COST_OUT)]) as sim:
            engine = engine_for(sim.base_url, args.concurrency)
            t0 = time.perf_counter()
            report = fill_column(connect, engine, source, spec, audit_schema=audits["normal"],
                                 run=RunContext(run_id=f"normal-{uuid.uuid4().hex[:6]}"), window=args.concurrency * 4)
            stats = sim.stats()
            normal_cost = report.cost_usd
            out["normal"] = {"requests": stats["requests"], "batches": 0, "cost_usd": round(report.cost_usd, 4),
                             "sim_cost_usd": round(stats["cost_usd"], 4), "seconds": round(time.perf_counter() - t0, 1),
                             "errors": report.errors}
            engine.close()
            sim.reset()

            engine = engine_for(sim.base_url, args.concurrency)
            t0 = time.perf_counter()
            policy = engine.model("sim").config.batch
            submitted = fill_column_batched(connect, engine, source, spec, policy=policy, audit_schema=audits["batch"],
                                            run=RunContext(run_id=f"submit-{uuid.uuid4().hex[:6]}"))
            submit_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            collected = fill_column_batched(connect, engine, source, spec, policy=policy,
                                            audit_schema=audits["batch"],
                                            run=RunContext(run_id=f"collect-{uuid.uuid4().hex[:6]}"))
            collect_s = time.perf_counter() - t1
            stats = sim.stats()
            with admin.cursor() as cur:
                cur.execute(f"select count(*), coalesce(sum(cost_usd), 0) from {audits['batch']}.llm_calls where not cached")
                calls, cost = cur.fetchone()
                cur.execute(f"select count(*) from {audits['batch']}.llm_results")
                answered = cur.fetchone()[0]
            batch_cost = float(cost)
            out["batch"] = {"requests": stats["requests"], "batches": stats["batches_created"],
                            "batch_requests": stats["batch_requests"], "cost_usd": round(float(cost), 4),
                            "sim_cost_usd": round(stats["cost_usd"], 4), "submit_s": round(submit_s, 1),
                            "collect_s": round(collect_s, 1), "answered": answered, "calls_logged": calls,
                            "pending_after_collect": collected.pending_keys, "submitted": len(submitted.submitted)}
            engine.close()
    finally:
        with admin.cursor() as cur:
            for name in (schema, *audits.values()):
                cur.execute(f"drop schema if exists {name} cascade")
        admin.close()
        server.release()

    n, b = out["normal"], out["batch"]
    out["cost_ratio_batch_vs_normal"] = round(batch_cost / normal_cost, 4) if normal_cost else None
    print(json.dumps(out))
    print(f"{args.keys} keys: normal path {n['requests']} chat requests, ${n['cost_usd']:.4f}, {n['seconds']}s | "
          f"batch path {b['requests']} chat requests, {b['batches']} batches holding {b['batch_requests']} requests, "
          f"${b['cost_usd']:.4f}, submit {b['submit_s']}s + collect {b['collect_s']}s | "
          f"cost ratio batch/normal {out['cost_ratio_batch_vs_normal']}, chat requests {n['requests']}:{b['requests']}, "
          f"API objects {n['requests']}:{b['batches']}")
    ok = b["answered"] == args.keys and b["batches"] == -(-args.keys // 50_000) and n["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
