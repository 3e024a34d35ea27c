"""``python -m dbt_pg_llm.simulator --port N [knobs]``: run the OpenAI/Anthropic-compatible simulator.

Prints exactly one line ``SIMULATOR LISTENING http://HOST:PORT`` (flushed) once it accepts requests.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .faults import FAULT_KINDS, RATE_LIMIT_HEADER_MODES, parse_fault_arg
from .server import Simulator, SimulatorConfig, start_runner


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dbt_pg_llm.simulator",
        description="A deterministic OpenAI/Anthropic-compatible LLM API simulator (for tests and benchmarks).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY or x-api-key: KEY")
    p.add_argument("--latency-ms", type=float, default=0.0, help="base latency of every answer")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra uniform random latency in [0, J]")
    p.add_argument("--per-token-ms", type=float, default=0.0, help="extra latency per completion token")
    p.add_argument("--max-concurrency", type=int, default=None, help="server-side cap; excess requests wait")
    p.add_argument("--rpm", type=int, default=None, help="requests per minute (429 + Retry-After above)")
    p.add_argument("--tpm", type=int, default=None, help="tokens per minute (429 + Retry-After above)")
    p.add_argument("--rate-window-s", type=float, default=60.0,
                   help="enforce --rpm/--tpm per window of this many seconds (1 = per-second slices, as real "
                        "providers do: 600 RPM = at most 10 per second)")
    p.add_argument("--cost-per-1k-input", type=float, default=0.0)
    p.add_argument("--cost-per-1k-output", type=float, default=0.0)
    p.add_argument("--cost-per-1k-cached-input", type=float, default=None,
                   help="price of prompt-cache reads (default: the input price)")
    p.add_argument("--cost-per-1k-cache-write", type=float, default=None,
                   help="price of Anthropic prompt-cache writes (default: 1.25x the input price)")
    p.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                   help=f"random fault, repeatable; KIND one of {', '.join(FAULT_KINDS)}; RATE in 0..1")
    p.add_argument("--stall-s", type=float, default=300.0, help="how long a 'stall' fault sleeps")
    p.add_argument("--fault-retry-after-s", type=float, default=1.0, help="the wait a '429' fault asks for")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--models", default=None, metavar="A,B",
                   help="model names served; any other gets 404 model_not_found (default: accept every name)")
    p.add_argument("--reject-params", default="", metavar="P,Q",
                   help="request parameters refused with 400 naming them, like a server without them "
                        "(e.g. logprobs,top_logprobs)")
    p.add_argument("--rate-limit-headers", choices=RATE_LIMIT_HEADER_MODES, default="retry-after",
                   help="how 429s say when to come back: Retry-After + retry-after-ms (default), OpenAI "
                        "x-ratelimit-reset-* durations / Anthropic anthropic-ratelimit-*-reset times, or nothing")
    p.add_argument("--batch-delay-s", type=float, default=0.0, help="batch APIs: a batch ends this long after creation")
    p.add_argument("--batch-error-rate", type=float, default=0.0, help="batch APIs: share of requests that error")
    p.add_argument("--batch-expire-rate", type=float, default=0.0,
                   help="batch APIs: share of requests left unprocessed (expired) when a batch ends")
    p.add_argument("--batch-discount", type=float, default=0.5, help="batch price = list price x this")
    p.add_argument("--model-error-rate", action="append", default=[], metavar="MODEL=RATE",
                   help="share of MODEL's labels answers that are another label, with lower confidence "
                        "(repeatable; deterministic by --seed): models of known, different error rates")
    return p


def _model_error_rate(text: str) -> tuple[str, float]:
    """``"sim-small=0.3"`` -> ("sim-small", 0.3); raises ValueError naming the problem."""
    model, sep, rate = text.partition("=")
    try:
        value = float(rate) if sep and model.strip() else None
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise ValueError(f"--model-error-rate {text!r}: expected MODEL=RATE with RATE between 0 and 1, "
                         "e.g. sim-small=0.3")
    return model.strip(), value


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    faults = {}
    for item in ns.fault:
        kind, rate = parse_fault_arg(item)
        faults[kind] = rate
    return SimulatorConfig(
        latency_ms=ns.latency_ms, jitter_ms=ns.jitter_ms, per_token_ms=ns.per_token_ms,
        max_concurrency=ns.max_concurrency, rpm=ns.rpm, tpm=ns.tpm, rate_window_s=ns.rate_window_s, api_key=ns.api_key,
        cost_per_1k_input=ns.cost_per_1k_input, cost_per_1k_output=ns.cost_per_1k_output,
        cost_per_1k_cached_input=ns.cost_per_1k_cached_input, cost_per_1k_cache_write=ns.cost_per_1k_cache_write,
        faults=faults, seed=ns.seed, stall_s=ns.stall_s, models=ns.models,
        reject_params=ns.reject_params or (), rate_limit_headers=ns.rate_limit_headers,
        fault_retry_after_s=ns.fault_retry_after_s, batch_delay_s=ns.batch_delay_s,
        batch_error_rate=ns.batch_error_rate, batch_expire_rate=ns.batch_expire_rate, batch_discount=ns.batch_discount,
        model_error_rates=dict(_model_error_rate(item) for item in ns.model_error_rate),
    )


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    sim = Simulator(config)
    runner, actual = await start_runner(sim, host, port)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, done.set)
        except (NotImplementedError, RuntimeError):  # e.g. Windows
            pass
    print(f"SIMULATOR LISTENING http://{host}:{actual}", flush=True)
    try:
        await done.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config, ns.host, ns.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
