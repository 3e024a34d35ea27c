"""A deterministic OpenAI/Anthropic-compatible LLM API simulator, for tests, demos and benchmarks.

In-process (own event loop on a background thread)::

    with SimulatorServer(SimulatorConfig(latency_ms=20, faults={"429": 0.1})) as sim:
        sim.base_url   # "http://127.0.0.1:PORT/v1"  (what ModelConfig.api_url wants)
        sim.stats()    # the ledger, see GET /_stats
        sim.reset()

As a subprocess (no GIL shared with the client; for benchmarks)::

    with SimulatorProcess(["--latency-ms", "50"]) as sim: ...

Command line: ``python -m dbt_pg_llm.simulator --help``.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import queue
import subprocess
import sys
import threading
import urllib.request

from .faults import FAULT_KINDS
from .server import Simulator, SimulatorConfig, start_runner

__all__ = ["SimulatorConfig", "SimulatorServer", "SimulatorProcess", "Simulator", "FAULT_KINDS"]


class _Urls:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SimulatorServer(_Urls):
    """The simulator on a background thread with its own event loop."""

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimulatorConfig()
        self.host, self.port = host, port
        self.simulator: Simulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None

    def start(self) -> "SimulatorServer":
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self.simulator = Simulator(self.config)
                self._runner, self.port = loop.run_until_complete(start_runner(self.simulator, self.host, self.port))
            except BaseException as exc:  # reported by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="llm-simulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise RuntimeError(f"simulator could not start on {self.host}:{self.port}: {failure[0]}") from failure[0]
        return self

    def _on_loop(self, fn, *args, **kwargs):
        if self._loop is None or self._thread is None:
            raise RuntimeError("simulator is not running; call start() first")

        async def call():
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(30)

    def stats(self) -> dict:
        return self._on_loop(lambda: json.loads(json.dumps(self.simulator.stats())))

    def reset(self) -> None:
        self._on_loop(self.simulator.reset)

    def configure(self, **changes) -> SimulatorConfig:
        """Change knobs of the running server (e.g. faults={"500": 1.0}); returns the new config."""
        self.config = self._on_loop(self.simulator.configure, **changes)
        return self.config

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop, runner = self._loop, self._runner
        if runner is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(15)
        self._thread = self._loop = self._runner = None


_processes: "set[SimulatorProcess]" = set()  # strong refs: a forgotten process is still killed at exit


@atexit.register
def _kill_all() -> None:
    for proc in list(_processes):
        proc.stop()


class SimulatorProcess(_Urls):
    """``python -m dbt_pg_llm.simulator ARGS`` as a subprocess; killed at interpreter exit at the latest."""

    def __init__(self, args: list[str] | tuple[str, ...] = (), host: str = "127.0.0.1",
                 startup_timeout_s: float = 30.0):
        self.args = [str(a) for a in args]
        self.host = host
        self.port = 0
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> "SimulatorProcess":
        if self.process is not None:
            return self
        args = list(self.args)
        if not any(a == "--port" or a.startswith("--port=") for a in args):
            args += ["--port", "0"]
        if not any(a == "--host" or a.startswith("--host=") for a in args):
            args += ["--host", self.host]
        cmd = [sys.executable, "-m", "dbt_pg_llm.simulator", *args]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        _processes.add(self)
        lines: queue.Queue = queue.Queue()

        def pump(stream) -> None:  # keeps draining stdout so the child never blocks on it
            try:
                for line in stream:
                    lines.put(line)
            except (OSError, ValueError):
                pass
            finally:
                lines.put(None)
                stream.close()

        self._pump = threading.Thread(target=pump, args=(self.process.stdout,), daemon=True)
        self._pump.start()
        try:
            while True:
                line = lines.get(timeout=self.startup_timeout_s)
                if line is None:
                    raise RuntimeError(f"simulator exited with code {self.process.wait()} before listening: {cmd}")
                if line.startswith("SIMULATOR LISTENING "):
                    url = line.split(" ", 2)[2].strip()
                    hostport = url.split("://", 1)[1]
                    self.host, port = hostport.rsplit(":", 1)
                    self.port = int(port)
                    return self
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"simulator did not report LISTENING within {self.startup_timeout_s}s: {cmd}") from None
        except BaseException:
            self.stop()
            raise

    def _http(self, method: str, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self._http("GET", "/_stats")

    def reset(self) -> None:
        self._http("POST", "/_reset")

    def configure(self, **changes) -> dict:
        """Change knobs of the running server via ``POST /_config``; returns the new config (key hidden)."""
        return self._http("POST", "/_config", changes)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        _processes.discard(self)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._pump is not None:
            self._pump.join(5)  # it closes the pipe at EOF
            self._pump = None
