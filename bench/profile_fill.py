"""Profile the fill path (claims, COPY, psycopg2, the loop thread) with cProfile on both threads.

    python bench/profile_fill.py [--rows 20000] [--distinct 10000] [--latency-ms 100] [--concurrency 256] [--top 25]

``fill_column`` runs on the calling thread (reading distinct prompts, claiming keys, COPYing answers
and audit rows); the engine's requests run on its loop thread. Each thread gets its own profiler;
prints the top functions by own time of each, grouped by package, then ONE summary line.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import sys
import time
import uuid

from common import BenchDatabase, sim_args

from dbt_pg_llm import BufferedSink, Engine, Model
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorProcess


def by_package(stats: pstats.Stats, n: int, top: int) -> str:
    """Own time per request, grouped by where the code lives (our modules by file)."""
    groups: collections.Counter = collections.Counter()
    for (path, _, name), row in stats.stats.items():
        if "dbt_pg_llm" in path:
            key = "dbt_pg_llm/" + path.split("dbt_pg_llm/")[-1]
        elif path == "~":
            key = name
        else:
            parts = path.split("site-packages/")
            key = parts[-1].split("/")[0] if len(parts) > 1 else os.path.basename(path)
        groups[key] += row[2]
    return "\n".join(f"  {seconds / n * 1000:7.3f} ms/req  {key}" for key, seconds in groups.most_common(top))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim:
        source = db.source_table("t", args.rows, args.distinct, "Profile review")
        engine = Engine([Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 64,
                                       "max_concurrency": args.concurrency})], sinks=[BufferedSink()])
        loop_prof, main_prof = cProfile.Profile(), cProfile.Profile()
        engine.loop.loop.call_soon_threadsafe(loop_prof.enable)
        spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
        t0 = time.perf_counter()
        main_prof.enable()
        fill_column(db.connect, engine, source, spec, audit_schema=db.new_schema("bench_audit"),
                    run=RunContext(run_id=f"profile-{uuid.uuid4().hex[:6]}"), window=args.concurrency * 4)
        main_prof.disable()
        wall = time.perf_counter() - t0
        engine.loop.loop.call_soon_threadsafe(loop_prof.disable)
        time.sleep(0.2)
        engine.close()
    loop_stats, main_stats = pstats.Stats(loop_prof), pstats.Stats(main_prof)
    print("loop thread (requests), own time per request by package:")
    print(by_package(loop_stats, args.distinct, args.top))
    print("calling thread (fill_column: read, claim, COPY, audit), own time per request by package:")
    print(by_package(main_stats, args.distinct, args.top))
    loop_total = sum(v[2] for v in loop_stats.stats.values())
    main_total = sum(v[2] for v in main_stats.stats.values())
    print(f"profile_fill: {args.distinct} distinct prompts in {args.rows} rows at concurrency {args.concurrency}: "
          f"{wall:.1f} s = {args.distinct / wall:.0f} req/s; loop thread {loop_total / args.distinct * 1000:.3f} ms/req, "
          f"calling thread {main_total / args.distinct * 1000:.3f} ms/req (own time under cProfile, wall clock)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
