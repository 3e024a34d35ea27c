"""Start and stop llama.cpp's ``llama-server`` for the real-server tests (see build.py for where the
binary and the model come from)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["LlamaServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``with LlamaServer(files) as srv:`` -> ``srv.base_url`` (``http://127.0.0.1:<port>/v1``).

    ``-t 1``: one thread keeps it stable on a 2-core box shared with Postgres and dbt; ``-c``: a
    small context (the tests' prompts are short; a context overflow is one of the things tested);
    ``--metrics``: the server's own token counters (``/metrics``), compared with the audit;
    ``-np 1``: one slot, so requests queue in the server rather than share one thread."""

    def __init__(self, files, *, ctx: int = 2048, threads: int = 1, log: Path | None = None,
                 start_timeout_s: float = 180.0):
        self.files = files
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.base_url = self.base + "/v1"
        self.ctx, self.threads = ctx, threads
        self.log = log
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        binary = Path(self.files.binary)
        env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(self.files.model), "--host", "127.0.0.1", "--port", str(self.port),
             "-t", str(self.threads), "-c", str(self.ctx), "--metrics", "-np", "1",
             # no weight repacking: a build for a CPU with AMX (ggml's GGML_NATIVE default) otherwise
             # runs AMX tile code, and a VM that advertises AMX without enabling it kills it (SIGILL)
             "--no-repack"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode} at start (log: {self.log})")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama-server not healthy within {self.start_timeout_s:g}s (log: {self.log})")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def post(self, path: str, body: dict, timeout: float = 300.0) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ask(self, prompt: str, **extra) -> str:
        status, data = self.post("/v1/chat/completions", {"model": "smollm2", "max_tokens": 16,
                                                          "messages": [{"role": "user", "content": prompt}], **extra})
        return data["choices"][0]["message"]["content"] if status == 200 else f"HTTP {status}: {data}"

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``llamacpp:prompt_tokens_total``, ...)."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out
