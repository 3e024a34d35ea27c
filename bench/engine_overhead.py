"""The engine's own CPU per call, without the network: what it adds on top of the HTTP client.

    python bench/engine_overhead.py [--n 3000]

An in-process httpx transport answers instantly, so the figures are pure CPU: httpx alone, then the
engine (pool, retry policy, validation, status, metrics, logs) with no cache, the memory cache, and
the diskcache journal. Best of 3 runs each. Target: the engine's own CPU well under 0.5 ms per call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dbt_pg_llm import DiskJournal, Engine, MemoryBackend, Model, ModelInput, ResultCache  # noqa: E402

BODY = json.dumps({"choices": [{"message": {"content": "Summary: fine"}, "finish_reason": "stop",
                                "logprobs": {"content": [{"token": "Sum", "logprob": -0.1}]}}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 3}}).encode()


class InstantTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(200, content=BODY, headers={"content-type": "application/json"})


def httpx_only(n: int) -> float:
    async def run() -> float:
        async with httpx.AsyncClient(transport=InstantTransport()) as client:
            sem = asyncio.Semaphore(256)

            async def one(i: int):  # the same shape of work as the engine runs below
                async with sem:
                    body = json.dumps({"messages": [{"role": "user", "content": f"prompt {i}"}]}).encode()
                    r = await client.post("http://sim.test/v1/chat/completions", content=body,
                                          headers={"content-type": "application/json"})
                    return json.loads(r.content)
            c0 = time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            return (time.process_time() - c0) / n * 1e6
    return min(asyncio.run(run()) for _ in range(3))


def engine_us(label: str, cache, n: int) -> float:
    engine = Engine(cache=cache)
    engine.register(Model("m", {"api_url": "http://sim.test/v1", "model_version": "v", "max_concurrency": 64},
                          transport=InstantTransport()))

    async def run(round_: int) -> float:
        sem = asyncio.Semaphore(256)

        async def one(i: int):
            async with sem:
                return await engine.acall("m", ModelInput(f"prompt {i} {label} {round_}"))
        c0 = time.process_time()
        outputs = await asyncio.gather(*(one(i) for i in range(n)))
        assert all(o.ok for o in outputs)
        return (time.process_time() - c0) / n * 1e6
    return min(engine.loop.run(run(r)) for r in range(3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args(argv)
    base = httpx_only(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"no cache": engine_us("none", None, args.n),
                "memory cache": engine_us("memory", ResultCache(MemoryBackend()), args.n),
                "journal": engine_us("journal", ResultCache(DiskJournal(tmp)), args.n)}
    print(f"httpx alone: {base:.0f} us/call")
    for label, us in rows.items():
        print(f"engine, {label}: {us:.0f} us/call total, {us - base:.0f} us/call the engine's own")
    print(json.dumps({"httpx_us": round(base), **{k.replace(' ', '_') + "_own_us": round(v - base)
                                                   for k, v in rows.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
