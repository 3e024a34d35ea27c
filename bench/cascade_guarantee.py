"""Guaranteed cascade vs oracle-only vs fixed-threshold cascades: cost and agreement with the oracle.

    python bench/cascade_guarantee.py [--n 10000] [--small-error-rate 0.3] [--target 0.9]
                                      [--failure-probability 0.05] [--sample-size 500] [--seed 0]

The simulator (in process, real HTTP) serves ``sim-small`` (wrong on ``--small-error-rate`` of the
labels, with lower confidence when wrong: ``--model-error-rate``) and ``sim-large`` (the oracle, never
wrong). Prices as gpt-4o-mini / gpt-4o. Each arm runs on a fresh engine (empty cache) over the same
``--n`` distinct classify keys: the oracle alone; plain cascades with a fixed ``min_confidence``
(0.5 and 0.8); the guaranteed cascade (``target_accuracy``), its sample's cost included. Agreement is
measured against the oracle's answer for every key. Prints one table.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine  # noqa: E402
from dbt_pg_llm.models.cascade_calibration import apply_calibration, calibrate  # noqa: E402
from dbt_pg_llm.pg.spec import ColumnSpec  # noqa: E402
from dbt_pg_llm.simulator import SimulatorConfig, SimulatorServer  # noqa: E402

PRICES = {"small": (0.00015, 0.0006), "large": (0.0025, 0.01)}  # $ per 1k tokens in / out: gpt-4o-mini, gpt-4o
LABELS = ["billing", "shipping", "quality", "other"]


def settings(url: str, strategy: dict) -> LlmSettings:
    def member(version, name):
        return {"api_url": url, "model_version": version, "structured_output": "prompt", "max_concurrency": 64,
                "cost_per_1k_input_tokens": PRICES[name][0], "cost_per_1k_output_tokens": PRICES[name][1]}
    return LlmSettings.from_dict({"default_model": "arm", "models": {
        "small": member("sim-small", "small"), "large": member("sim-large", "large"),
        "arm": {"strategy": "cascade", "models": ["small", "large"], **strategy}}})


def run_all(engine, name, items):
    async def go():
        sem = asyncio.Semaphore(128)

        async def one(inp):
            async with sem:
                return await engine.acall(name, inp)
        return await asyncio.gather(*(one(inp) for inp in items))
    return engine.loop.run(go())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--small-error-rate", type=float, default=0.3)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--failure-probability", type=float, default=0.05)
    p.add_argument("--sample-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    spec = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": LABELS}, "arm")
    items = [spec.model_input(f"order {i}: customer {i % 97} wrote about parcel {i * 7 % 1013}") for i in range(ns.n)]
    rows = []
    with SimulatorServer(config=SimulatorConfig(model_error_rates={"sim-small": ns.small_error_rate},
                                                seed=ns.seed)) as sim:
        def arm(label, model, strategy, guaranteed=False):
            engine = build_engine(settings(sim.base_url, strategy), journal=False, sinks=[BufferedSink()])
            try:
                t0 = time.perf_counter()
                extra, note = 0.0, ""
                if guaranteed:
                    cal = calibrate(engine, "arm", items, seed=ns.seed)
                    apply_calibration(engine, "arm", cal)
                    extra = cal.cost_usd
                    c = cal.choice
                    note = (f"threshold {c.thresholds[0]:.2f}, sample {c.sample_size}, measured {c.measured_agreement:.3f}, "
                            f"bound {c.agreement_lower_bound:.3f}")
                outs = run_all(engine, model, items)
                seconds = time.perf_counter() - t0
                return outs, sum(o.cost_usd for o in outs) + extra, seconds, note
            finally:
                engine.close()

        oracle, oracle_cost, secs, _ = arm("oracle", "large", {})
        truth = [o.value for o in oracle]
        rows.append(("oracle only (sim-large)", oracle_cost, 1.0, 1.0, secs, ""))
        for label, strategy, guaranteed in (
                ("cascade min_confidence 0.5", {"min_confidence": 0.5}, False),
                ("cascade min_confidence 0.8", {"min_confidence": 0.8}, False),
                (f"guaranteed target {ns.target} (delta {ns.failure_probability})",
                 {"target_accuracy": ns.target, "failure_probability": ns.failure_probability,
                  "sample_size": ns.sample_size}, True)):
            outs, cost, secs, note = arm(label, "arm", strategy, guaranteed)
            agreement = sum(o.value == t for o, t in zip(outs, truth)) / ns.n
            oracle_share = sum(o.model == "large" for o in outs) / ns.n
            rows.append((label, cost, agreement, oracle_share, secs, note))
    print(f"{ns.n} distinct keys, sim-small wrong on {ns.small_error_rate:.0%} of labels, "
          f"prices $/1k in/out small {PRICES['small']}, large {PRICES['large']}")
    print(f"| arm | cost USD | vs oracle-only | agreement with oracle | answered by oracle | seconds | calibration |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, cost, agreement, share, secs, note in rows:
        print(f"| {label} | {cost:.4f} | {cost / oracle_cost:.2f}x | {agreement:.4f} | {share:.3f} | {secs:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
