"""A rate-limited provider: the engine against the simulator at --rpm 600 enforced in per-second slices.

    python bench/rate_limited.py [--n 900] [--rpm 600] [--latency-ms 100] [--concurrency 64]

Real providers quantize a per-minute limit into shorter windows (600 RPM = at most 10 in any second);
the simulator does the same with ``--rate-window-s 1``. The engine's model is configured with the
same ``rpm``. Reports the share of requests answered 429 and the steady-state rate (answers between
the 10th and the 90th percentile of completion times) against the limit, the simulator's ledger vs
the engine's totals, and ONE summary line. Targets: 429s <= 1% of requests, >= 0.95 of the limit.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from common import PRICE_IN, PRICE_OUT, ledger_matches, sim_args

from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache
from dbt_pg_llm.simulator import SimulatorProcess


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    with SimulatorProcess(sim_args(args.latency_ms, "--rpm", str(args.rpm), "--rate-window-s", "1")) as sim, tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cache=ResultCache(DiskJournal(tmp)))
        engine.register(Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 32,
                                      "max_concurrency": args.concurrency, "rpm": args.rpm,
                                      "cost_per_1k_input_tokens": PRICE_IN, "cost_per_1k_output_tokens": PRICE_OUT}))
        done_at, tokens, cost, failed = [], 0, 0.0, 0
        t0 = time.perf_counter()
        items = ((i, ModelInput(f"Classify ticket #{i}: my parcel never arrived.")) for i in range(args.n))
        for _, output in engine.map_unordered("sim", items, window=args.concurrency * 4):
            done_at.append(time.perf_counter() - t0)
            failed += not output.ok
            tokens += output.tokens.prompt + output.tokens.completion
            cost += output.cost_usd
        engine.close()
        stats = sim.stats()
    limit = args.rpm / 60.0
    lo, hi = done_at[len(done_at) // 10], done_at[len(done_at) * 9 // 10]
    steady = (len(done_at) * 9 // 10 - len(done_at) // 10) / (hi - lo)
    share_429 = stats["rate_limited"] / max(1, stats["requests"])
    ledger_tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    ledger_ok = ledger_matches(stats, tokens, cost)
    print(json.dumps({"n": args.n, "rpm": args.rpm, "requests": stats["requests"], "rate_limited": stats["rate_limited"],
                      "failed_rows": failed, "steady_rps": round(steady, 2), "limit_rps": round(limit, 2),
                      "wall_s": round(done_at[-1], 1), "ledger_tokens": ledger_tokens, "engine_tokens": tokens,
                      "ledger_cost_usd": round(stats["cost_usd"], 9), "engine_cost_usd": round(cost, 9)}))
    ok = share_429 <= 0.01 and steady >= 0.95 * limit and not failed and ledger_ok
    print(f"rate_limited (n={args.n}, rpm {args.rpm} in 1 s slices): {stats['rate_limited']} 429s of "
          f"{stats['requests']} requests ({share_429:.1%}), steady {steady:.2f} req/s = {steady / limit:.2f} of the "
          f"limit, {failed} failed rows; ledger vs engine tokens/cost {'equal' if ledger_ok else 'DIFFERENT'}; "
          f"targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
