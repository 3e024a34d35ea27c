"""Issue 16 §3: a run paused (SIGSTOP) for longer than ``timeout_ms`` pays each key once.

The engine runs in a process of its own against the simulator (in this process, so it keeps
answering while the engine is stopped); the simulator's ledger is the truth of what was billed.
Answers that arrived during the pause sit in the socket buffers: they were paid for and must be read,
not dropped as timeouts and requested again. A server that really is slower than ``timeout_ms`` still
times out.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dbt_pg_llm import Engine, ErrorKind, MemoryBackend, Model, ModelInput, ResultCache
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

# The child: one model (16 connections, retries on), 64 distinct prompts; prints what came back.
CHILD = """
import json, sys
from dbt_pg_llm import Engine, MemoryBackend, Model, ModelInput, ResultCache
url, n, timeout_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = Model("m", {"api_url": url, "model_version": "sim-small", "max_tokens": 16, "max_concurrency": 16,
                    "timeout_ms": timeout_ms, "retry": {"max_retries": 2, "base_delay_ms": 10}})
engine = Engine([model], cache=ResultCache(MemoryBackend()))
outs = [o for _, o in engine.map_unordered("m", ((i, ModelInput(f"row {i} text")) for i in range(n)), window=32)]
print(json.dumps({"failed": sum(not o.ok for o in outs), "retried": sum(o.attempts > 1 for o in outs)}), flush=True)
engine.close()
"""


def _paid(sim) -> tuple[int, int, int]:
    """(requests, distinct prompts, prompts paid more than once) from the simulator's ledger."""
    stats = sim.stats()
    by_prompt = stats["by_prompt_sha256"]
    return stats["requests"], len(by_prompt), sum(1 for n in by_prompt.values() if n > 1)


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_a_run_paused_longer_than_timeout_ms_pays_each_key_once(simulator_factory, event_loop):
    sim = simulator_factory(SimulatorConfig(latency_ms=200))  # well below timeout_ms
    timeout_ms, rows = 1000, 64
    child = subprocess.Popen([sys.executable, "-c", CHILD, sim.base_url, str(rows), str(timeout_ms)],
                             env={**os.environ, "DBT_PG_LLM_EVENT_LOOP": event_loop},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["requests"] < 20:  # the first 16 answered, the next 16 in flight
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGSTOP)
        in_flight = sim.stats()["in_flight"]
        time.sleep(2.5 * timeout_ms / 1000)  # the simulator answers everything in flight meanwhile
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    requests, distinct, paid_twice = _paid(sim)
    print(f"\n[ledger] {event_loop}: paused {2.5 * timeout_ms:.0f} ms with {in_flight} in flight: requests={requests} "
          f"distinct={distinct} paid_twice={paid_twice} retried={result['retried']}")
    assert in_flight > 0  # the pause really caught requests in flight
    assert distinct == rows and result["failed"] == 0
    assert paid_twice == 0 and requests == rows  # nothing counted as a timeout, nothing asked again
    assert result["retried"] == 0


def test_a_server_slower_than_timeout_ms_still_times_out(simulator_factory):
    sim = simulator_factory(SimulatorConfig(latency_ms=1500))
    model = Model("m", {"api_url": sim.base_url, "model_version": "sim-small", "max_tokens": 16,
                        "timeout_ms": 400, "retry": {"max_retries": 0}})
    engine = Engine([model], cache=ResultCache(MemoryBackend()))
    try:
        started = time.monotonic()
        outs = [o for _, o in engine.map_unordered("m", ((i, ModelInput(f"slow {i}")) for i in range(4)))]
        took = time.monotonic() - started
    finally:
        engine.close()
    assert [o.error_kind for o in outs] == [ErrorKind.TIMEOUT] * 4, [o.error_message for o in outs]
    assert "timeout_ms=400" in outs[0].error_message
    assert took < 1.4  # the timeout (0.4 s) and its grace (0.1 s), not the server's 1.5 s


async def _trickle(chunks: int, gap_s: float):
    """A local server whose answer comes in ``chunks`` pieces ``gap_s`` apart (a streamed answer)."""
    from aiohttp import web

    async def handler(request):
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(chunks):
            await asyncio.sleep(gap_s)
            await response.write(f"data: {i}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/v1/x"


@pytest.mark.parametrize("chunks, gap_s, times_out", [(6, 0.2, False), (2, 1.6, True)])
def test_timeout_ms_is_a_wait_without_bytes_not_a_cap_on_a_flowing_answer(chunks, gap_s, times_out):
    """As aiohttp's sock_read was: 6 chunks 0.2 s apart (1.2 s in all) outlive timeout_ms=800; a gap of
    1.6 s before a chunk is a timeout (after timeout_ms and its 0.1 s grace, not the 1.6 s)."""
    from dbt_pg_llm.models.config import ModelConfig
    from dbt_pg_llm.models.providers.wire import AiohttpWire

    async def go():
        runner, url = await _trickle(chunks, gap_s)
        wire = AiohttpWire(ModelConfig(api_url=url, timeout_ms=800))
        started = time.monotonic()
        try:
            response = await wire.post(url, b"{}", {"content-type": "application/json"})
            return response.content, time.monotonic() - started
        except asyncio.TimeoutError:
            return None, time.monotonic() - started
        finally:
            await wire.aclose()
            await runner.cleanup()

    body, took = asyncio.run(go())
    if times_out:
        assert body is None and 0.8 <= took < 1.5
    else:
        assert body == b"".join(f"data: {i}\n\n".encode() for i in range(chunks)) and took >= 1.0
