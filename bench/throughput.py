"""Throughput: the engine vs a raw-aiohttp client, the openai SDK, LiteLLM and a naive loop, in one run.

    python bench/throughput.py [--n 5000] [--latency-ms 100] [--concurrency 64,256,512] [--repeat 3]
                               [--peers openai,litellm] [--peer-n 2000] [--naive-sample 20]

The simulator runs in its own process (so it does not share this process's GIL). Every client sends
distinct prompts to the same simulator; ratios are printed side by side because absolute times on a
noisy 2-core machine mean little (the reference and the engine run alternately ``--repeat`` times and
their medians are compared). Peers (each in a process of its own) are optional
(``pip install -e .[bench]``); LiteLLM runs with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no network). The engine's CPU per request is this process's
CPU time (both threads) over the requests. The simulator's ledger for the engine's requests is
compared with the engine's own token and cost totals (they must be equal).

Prints one JSON line per concurrency and ONE summary line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from common import PRICE_IN, PRICE_OUT, ledger_matches, sim_args

from dbt_pg_llm import DiskJournal, Engine, Model, ModelInput, ResultCache
from dbt_pg_llm.simulator import SimulatorProcess  


def prompts(n: int, tag: str) -> list[str]:
    return [f"[{tag}] Summarize review #{i}: the product arrived on time and works as described." for i in range(n)]


def _body(prompt: str) -> dict:
    return {"model": "sim-1", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}


async def _gather(one, items: list[str], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def bounded(prompt: str) -> None:
        async with sem:
            await one(prompt)

    t0 = time.perf_counter()
    await asyncio.gather(*(bounded(p) for p in items))
    return len(items) / (time.perf_counter() - t0)


async def reference_client(url: str, items: list[str], concurrency: int) -> float:
    """The ceiling for a Python client: one aiohttp session, a semaphore, nothing else."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(prompt: str) -> None:
            async with session.post(url + "/chat/completions", json=_body(prompt)) as response:
                assert (await response.json())["choices"][0]["message"]["content"]

        await _gather(one, items[:concurrency], concurrency)  # open the connections outside the timing
        return await _gather(one, items[concurrency:], concurrency)


async def openai_client(url: str, items: list[str], concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)

    async def one(prompt: str) -> None:
        answer = await client.chat.completions.create(**_body(prompt))
        assert answer.choices[0].message.content

    await _gather(one, items[:concurrency], concurrency)
    rate = await _gather(one, items[concurrency:], concurrency)
    await client.close()
    return rate


async def litellm_client(url: str, items: list[str], concurrency: int) -> float:
    import logging

    import litellm

    logging.getLogger("LiteLLM").setLevel(logging.ERROR)  # its pool-saturation warnings, one per request

    async def one(prompt: str) -> None:
        answer = await litellm.acompletion(model="openai/sim-1", api_base=url, api_key="bench", num_retries=0,
                                           messages=[{"role": "user", "content": prompt}], max_tokens=64)
        assert answer.choices[0].message.content

    await _gather(one, items[:concurrency], concurrency)
    return await _gather(one, items[concurrency:], concurrency)


def engine_client(sim, items: list[str], concurrency: int, journal_dir: str) -> dict:
    """The engine as the dbt adapter drives it: sync facade, streaming map, journal cache, metrics."""
    engine = Engine(cache=ResultCache(DiskJournal(journal_dir)))
    engine.register(Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 64,
                                  "max_concurrency": concurrency, "cost_per_1k_input_tokens": PRICE_IN,
                                  "cost_per_1k_output_tokens": PRICE_OUT}))
    warm = items[:concurrency]  # open the loop and the connections outside the timing
    list(engine.map_unordered("sim", ((i, ModelInput(p)) for i, p in enumerate(warm)), window=concurrency))
    timed = items[concurrency:]
    before = _ledger(sim.stats())
    cpu0, t0 = time.process_time(), time.perf_counter()
    tokens = cost = 0
    for _, output in engine.map_unordered("sim", ((i, ModelInput(p)) for i, p in enumerate(timed)),
                                          window=concurrency * 4):
        assert output.ok, output.error_message
        tokens += output.tokens.prompt + output.tokens.completion
        cost += output.cost_usd
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = _ledger(sim.stats())
    engine.close()
    return {"rps": len(timed) / wall, "cpu_ms": cpu / len(timed) * 1000, "tokens": tokens, "cost": cost,
            "ledger_tokens": after[0] - before[0], "ledger_cost": after[1] - before[1],
            "ledger_ok": ledger_matches({"prompt_tokens": after[0] - before[0], "completion_tokens": 0,
                                         "cost_usd": after[1] - before[1]}, tokens, cost)}


def naive_loop(base_url: str, items: list[str]) -> float:
    """What a per-row Python UDF does: one blocking request after another."""
    with httpx.Client(timeout=30) as client:
        t0 = time.perf_counter()
        for prompt in items:
            client.post(base_url + "/chat/completions", json=_body(prompt)).raise_for_status()
        return len(items) / (time.perf_counter() - t0)


PEERS = {"openai": openai_client, "litellm": litellm_client}


def _peer(name: str, url: str, n: int, tag: str, concurrency: int) -> float | None:
    """A peer's rate, measured in a process of its own: LiteLLM's and the SDK's imports (thousands of
    modules) would grow this process's heap, and every later full garbage collection here -- the
    raw aiohttp reference's too -- would scan them (measured: the reference fell from ~3,900 to
    ~2,700 req/s at 512 once LiteLLM had been imported)."""
    done = subprocess.run([sys.executable, __file__, "--peer-run", name, "--peer-url", url, "--n", str(n),
                           "--peer-tag", tag, "--concurrency", str(concurrency)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"# {name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}; "
              "pip install -e '.[bench]'", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def _peer_run(args) -> int:
    """The child side of ``_peer``: prints the rate."""
    rate = asyncio.run(PEERS[args.peer_run](args.peer_url, prompts(args.n, args.peer_tag), int(args.concurrency)))
    print(rate)
    return 0


def _ledger(stats: dict) -> tuple[int, float]:
    return stats["prompt_tokens"] + stats["completion_tokens"], stats["cost_usd"]


def run_one(sim, args, concurrency: int, tmp: str) -> dict:
    """The reference and the engine, alternately ``--repeat`` times (fresh prompts and journal each
    time); the medians are compared. One pair measured alone varied by +-6% on this 2-core box."""
    ceiling = concurrency / (args.latency_ms / 1000)
    tag = f"c{concurrency}"
    refs, engines = [], []
    for repeat in range(args.repeat):
        refs.append(asyncio.run(reference_client(sim.base_url, prompts(args.n, f"ref-{tag}-{repeat}"), concurrency)))
        engines.append(engine_client(sim, prompts(args.n, f"engine-{tag}-{repeat}"), concurrency,
                                     os.path.join(tmp, f"{tag}-{repeat}")))
    ref = statistics.median(refs)
    rps = statistics.median(e["rps"] for e in engines)
    row = {"concurrency": concurrency, "ceiling_rps": round(ceiling), "reference_rps": round(ref),
           "engine_rps": round(rps), "engine_vs_reference": round(rps / ref, 3),
           "engine_cpu_ms_per_request": round(statistics.median(e["cpu_ms"] for e in engines), 3),
           "reference_runs_rps": [round(r) for r in refs], "engine_runs_rps": [round(e["rps"]) for e in engines]}
    row["ledger_tokens"] = sum(e["ledger_tokens"] for e in engines)
    row["ledger_cost_usd"] = round(sum(e["ledger_cost"] for e in engines), 9)
    row["ledger_ok"] = all(e["ledger_ok"] for e in engines)
    row["engine_tokens"] = sum(e["tokens"] for e in engines)
    row["engine_cost_usd"] = round(sum(e["cost"] for e in engines), 9)
    for peer in args.peers:
        rate = _peer(peer, sim.base_url, min(args.n, args.peer_n), f"{peer}-{tag}", concurrency)
        if rate is not None:
            row[f"{peer}_rps"] = round(rate)
            row[f"engine_vs_{peer}"] = round(rps / rate, 2)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", default="64,256,512", help="comma-separated list")
    parser.add_argument("--peers", default="openai,litellm", help="comma-separated; '' for none")
    parser.add_argument("--peer-n", type=int, default=2000, help="prompts per peer run (they are slow)")
    parser.add_argument("--naive-sample", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="reference/engine pairs per concurrency (medians)")
    parser.add_argument("--peer-run", choices=sorted(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--peer-url", help=argparse.SUPPRESS)
    parser.add_argument("--peer-tag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_run:
        return _peer_run(args)
    args.peers = [p for p in args.peers.split(",") if p]
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with SimulatorProcess(sim_args(args.latency_ms)) as sim, tempfile.TemporaryDirectory() as tmp:
        for concurrency in levels:
            rows.append(run_one(sim, args, concurrency, tmp))
            print(json.dumps(rows[-1]), flush=True)
        naive = naive_loop(sim.base_url, prompts(args.naive_sample, "naive"))
    ledger_ok = all(r["ledger_ok"] for r in rows)
    parts = []
    for r in rows:
        peers = "".join(f", {r[f'engine_vs_{p}']}x {p}" for p in args.peers if f"engine_vs_{p}" in r)
        parts.append(f"c={r['concurrency']}: {r['engine_vs_reference']:.2f}x aiohttp{peers}, "
                     f"{r['engine_cpu_ms_per_request']:.2f} ms CPU/req")
    print(f"throughput (n={args.n}, latency {args.latency_ms} ms): " + "; ".join(parts)
          + f"; {rows[0]['engine_rps'] / naive:.0f}x naive; ledger vs engine tokens/cost "
          + ("equal" if ledger_ok else "DIFFERENT"))
    return 0 if ledger_ok else 1


if __name__ == "__main__":
    sys.exit(main())
