"""Throughput: the engine vs a minimal raw-aiohttp client vs a naive sequential loop, in one run.

    python bench/throughput.py [--n 5000] [--latency-ms 100] [--concurrency 64] [--naive-sample 40]

The simulator runs in its own process (so it does not share this process's GIL). All three clients
send distinct prompts to the same simulator; ratios are printed side by side because absolute times
on a noisy 2-core machine mean little. Targets: engine >= 0.9x the reference, >= 50x the naive loop.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import aiohttp
import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache  # noqa: E402
from dbt_pg_llm.simulator import SimulatorProcess  # noqa: E402


def prompts(n: int, tag: str) -> list[str]:
    return [f"[{tag}] Summarize review #{i}: the product arrived on time and works as described." for i in range(n)]


async def reference_client(url: str, items: list[str], concurrency: int) -> float:
    """The ceiling for a Python client: one aiohttp session, a semaphore, nothing else."""
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(prompt: str) -> None:
            body = {"model": "sim-1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
            async with sem:
                async with session.post(url, json=body) as response:
                    data = await response.json()
                    assert data["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in items))
        return len(items) / (time.perf_counter() - t0)


def engine_client(base_url: str, items: list[str], concurrency: int, journal_dir: str) -> tuple[float, float]:
    """The engine as the dbt adapter drives it: sync facade, streaming map, journal cache, logs."""
    engine = Engine(cache=ResultCache(DiskJournal(journal_dir)))
    engine.register(Model("sim", {"api_url": base_url, "model_version": "sim-1", "max_tokens": 64,
                                  "max_concurrency": concurrency}))
    engine.call("sim", ModelInput("warm-up"))  # open the loop and the first connection outside the timing
    cpu0, t0 = time.process_time(), time.perf_counter()
    done = 0
    for _, output in engine.map_unordered("sim", ((i, ModelInput(p)) for i, p in enumerate(items)),
                                          window=concurrency * 4):
        assert output.ok, output.error_message
        done += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    engine.close()
    return done / wall, cpu / done * 1000


def naive_loop(base_url: str, items: list[str]) -> float:
    """What a per-row Python UDF does: one blocking request after another."""
    with httpx.Client(timeout=30) as client:
        t0 = time.perf_counter()
        for prompt in items:
            r = client.post(base_url + "/chat/completions",
                            json={"model": "sim-1", "messages": [{"role": "user", "content": prompt}],
                                  "max_tokens": 64})
            r.raise_for_status()
        return len(items) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--naive-sample", type=int, default=40)
    args = parser.parse_args(argv)

    with SimulatorProcess(["--latency-ms", str(args.latency_ms)]) as sim, tempfile.TemporaryDirectory() as tmp:
        ceiling = args.concurrency / (args.latency_ms / 1000)
        ref = asyncio.run(reference_client(sim.base_url + "/chat/completions", prompts(args.n, "ref"),
                                           args.concurrency))
        eng, cpu_ms = engine_client(sim.base_url, prompts(args.n, "engine"), args.concurrency, tmp)
        naive = naive_loop(sim.base_url, prompts(args.naive_sample, "naive"))
        stats = sim.stats()
    result = {
        "n": args.n, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
        "ceiling_rps": round(ceiling, 1), "reference_rps": round(ref, 1), "engine_rps": round(eng, 1),
        "naive_rps": round(naive, 2), "engine_cpu_ms_per_request": round(cpu_ms, 3),
        "engine_vs_reference": round(eng / ref, 3), "engine_vs_naive": round(eng / naive, 1),
        "reference_vs_ceiling": round(ref / ceiling, 3), "simulator_requests": stats["requests"],
    }
    print(json.dumps(result))
    print(f"engine {eng:.0f} req/s = {eng / ref:.2f}x reference ({ref:.0f} req/s), {eng / naive:.0f}x naive "
          f"({naive:.1f} req/s); engine CPU {cpu_ms:.3f} ms/request; ceiling C/L = {ceiling:.0f} req/s")
    ok = eng / ref >= 0.9 and eng / naive >= 50
    print("targets (>= 0.9x reference, >= 50x naive):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
