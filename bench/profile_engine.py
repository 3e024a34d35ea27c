"""Profile the engine's hot path (ModelInput -> request -> parse -> cache -> log -> metrics) with cProfile.

    python bench/profile_engine.py [--n 3000] [--concurrency 256] [--latency-ms 100] [--top 30] [--out FILE]

The engine's work runs on its loop thread, so the profiler is enabled there (cProfile profiles one
thread) and, separately, on the calling thread (``map_unordered``'s side). Prints the top functions
by own time on the loop thread, then ONE summary line: CPU ms per request of each thread.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache  # noqa: E402
from dbt_pg_llm.simulator import SimulatorProcess  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default=None, help="also dump the loop thread's stats here (pstats format)")
    args = parser.parse_args(argv)
    with SimulatorProcess(["--latency-ms", str(args.latency_ms)]) as sim, tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cache=ResultCache(DiskJournal(tmp)))
        engine.register(Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 64,
                                      "max_concurrency": args.concurrency}))
        engine.call("sim", ModelInput("warm-up"))
        loop_prof, main_prof = cProfile.Profile(), cProfile.Profile()
        engine.loop.loop.call_soon_threadsafe(loop_prof.enable)
        items = ((i, ModelInput(f"Summarize review #{i}: it works.")) for i in range(args.n))
        t0 = time.perf_counter()
        main_prof.enable()
        for _, output in engine.map_unordered("sim", items, window=args.concurrency * 4):
            assert output.ok, output.error_message
        main_prof.disable()
        wall = time.perf_counter() - t0
        engine.loop.run(_disable(loop_prof))
        engine.close()
    stream = io.StringIO()
    stats = pstats.Stats(loop_prof, stream=stream).sort_stats("tottime")
    stats.print_stats(args.top)
    print(stream.getvalue())
    if args.out:
        stats.dump_stats(args.out)
    loop_total = sum(v[2] for v in stats.stats.values())  # own time of every function
    main_total = sum(v[2] for v in pstats.Stats(main_prof).stats.values())
    print(f"profile: {args.n} requests at concurrency {args.concurrency} in {wall:.1f} s; loop thread "
          f"{loop_total / args.n * 1000:.3f} ms/request, calling thread {main_total / args.n * 1000:.3f} ms/request "
          "(under cProfile, which inflates both)")
    return 0


async def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


if __name__ == "__main__":
    sys.exit(main())
