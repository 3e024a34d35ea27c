"""The simulator's aiohttp application: OpenAI chat completions, Anthropic messages, ledger endpoints.

Per-request work is kept small: answers are cached (answers.compute_answer), one json.dumps per
response, no access log, latency via asyncio.sleep, the concurrency cap via asyncio.Semaphore.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
from dataclasses import asdict, dataclass, field, fields

from aiohttp import web

from . import answers as A
from .batch_api import BatchApi, add_batch_routes
from .faults import FaultPicker, RateLimiter, check_faults, retry_after_headers
from .wire import (Request, anthropic_body, anthropic_error, make_sse_anthropic, make_sse_openai, openai_body,
                   openai_error, parse_request)

__all__ = ["SimulatorConfig", "Simulator", "make_app", "start_runner", "MODELS"]

MODELS = ("sim-small", "sim-large", "gpt-4o-mini", "claude-3-5-haiku-latest")
_JSON = "application/json"
SIMULATOR_KEY = web.AppKey("simulator", object)
_RETRY_1S = {"Retry-After": "1", "retry-after-ms": "1000"}


@dataclass
class SimulatorConfig:
    """The simulator's knobs (see ``python -m dbt_pg_llm.simulator --help``)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    per_token_ms: float = 0.0
    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    rate_window_s: float = 60.0  # rpm/tpm enforced per window of this length (1 = per-second slices)
    api_key: str | None = field(default=None, repr=False)
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)
    seed: int | None = 0
    stall_s: float = 300.0
    batch_delay_s: float = 0.0  # batch APIs (batch_api.py): a batch ends this long after creation
    batch_error_rate: float = 0.0  # share of batch requests answered with an error
    batch_expire_rate: float = 0.0  # share of batch requests left unprocessed (expired) at the end
    batch_discount: float = 0.5  # batch price = list price x this

    def __post_init__(self):
        self.faults = check_faults(self.faults)
        if not float(self.rate_window_s) > 0:
            raise ValueError(f"rate_window_s: {self.rate_window_s!r} must be > 0 seconds (60 = per-minute buckets)")
        for name in ("batch_error_rate", "batch_expire_rate", "batch_discount"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)!r} must be between 0 and 1")


class Simulator:
    """State of one simulated provider: config, ledger, fault picker, rate limiter."""

    def __init__(self, config: SimulatorConfig | None = None):
        self.config = config or SimulatorConfig()
        self._apply_config()
        self.batches = BatchApi(self)
        self.reset()

    # -- configuration / ledger -------------------------------------------------------------------
    def _apply_config(self) -> None:
        c = self.config
        self.picker = FaultPicker(c.faults, c.seed)
        self.limiter = RateLimiter(c.rpm, c.tpm, c.rate_window_s)
        self.sem = asyncio.Semaphore(c.max_concurrency) if c.max_concurrency else None
        self.jitter_rng = random.Random(c.seed)

    def configure(self, **changes) -> SimulatorConfig:
        """Change knobs live (unknown keys raise ValueError). Rebuilds limiter, semaphore and RNG."""
        known = {f.name for f in fields(SimulatorConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        self.config = SimulatorConfig(**{**asdict(self.config), **changes})
        self._apply_config()
        return self.config

    def reset(self) -> None:
        """Zero the ledger and scripted-fault counters; reseed the fault RNG; refill the rate buckets."""
        self.requests = 0
        self.by_prompt: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.fault_counts: dict[str, int] = {}
        self.answered = 0
        self.rate_limited = 0
        self.unauthorized = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.active = 0  # requests past the max_concurrency semaphore
        self.max_active = 0
        self.picker.reset()
        self.batches.reset()
        self.limiter = RateLimiter(self.config.rpm, self.config.tpm, self.config.rate_window_s)
        self.jitter_rng = random.Random(self.config.seed)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "by_prompt_sha256": dict(self.by_prompt),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "faults": dict(self.fault_counts),
            "answered": self.answered,
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "active": self.active,
            "max_active": self.max_active,
            **self.batches.stats(),
        }

    # -- the request path -------------------------------------------------------------------------
    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, False)

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, True)

    def _error(self, anth: bool, status: int, message: str, kind: str | None = None,
               code: str | None = None, headers: dict | None = None) -> web.Response:
        body = anthropic_error(status, message, kind) if anth else openai_error(status, message, kind, code)
        return web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        if not key:
            return True
        h = request.headers
        return h.get("Authorization") == f"Bearer {key}" or h.get("x-api-key") == key

    async def _handle(self, request: web.Request, anth: bool) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = None
            req = parse_request(body, anth) if isinstance(body, dict) else "request body is not a JSON object"
            if isinstance(req, Request):
                sha = A.prompt_sha256(req.user)
                self.by_prompt[sha] = self.by_prompt.get(sha, 0) + 1
            if not self._authorized(request):
                self.unauthorized += 1
                msg = "invalid x-api-key" if anth else "Incorrect API key provided. You can find your API key in your account settings."
                return self._error(anth, 401, msg, code="invalid_api_key")
            if not isinstance(req, Request):
                return self._error(anth, 400, req)
            return await self._answer(request, req, anth)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, req: Request, anth: bool) -> web.StreamResponse:
        cfg = self.config
        mode, answer = A.compute_answer(req.system, req.user, req.response_format)
        finish = "stop"
        stop_seq = None
        for s in req.stop:
            i = answer.find(s) if s else -1
            if i >= 0 and (stop_seq is None or i < answer.find(stop_seq)):
                stop_seq = s
        if stop_seq is not None:
            answer = answer[: answer.find(stop_seq)]
        if req.max_tokens is not None and A.completion_tokens(answer) > req.max_tokens:
            answer, finish, stop_seq = A.cut_to_tokens(answer, req.max_tokens), "length", None
        ptoks = A.prompt_tokens(req.contents)

        if self.limiter.active:
            wait, which = self.limiter.admit(ptoks + A.completion_tokens(answer))
            if wait > 0:
                self.rate_limited += 1
                msg = f"Rate limit reached for {which} per minute. Please try again in {wait:.3f}s."
                return self._error(anth, 429, msg, kind="requests" if which == "requests" else "tokens",
                                   code="rate_limit_exceeded", headers=retry_after_headers(wait))

        fault = self.picker.pick(req.user)
        if fault is not None:
            self.fault_counts[fault] = self.fault_counts.get(fault, 0) + 1
            if fault == "stall":
                await asyncio.sleep(cfg.stall_s)
                fault = None
        sem = self.sem
        async with (sem if sem is not None else contextlib.nullcontext()):
            self.active += 1
            if self.active > self.max_active:
                self.max_active = self.active
            try:
                return await self._respond(request, req, anth, answer, finish, stop_seq, ptoks, fault)
            finally:
                self.active -= 1

    async def _respond(self, request, req, anth, answer, finish, stop_seq, ptoks, fault) -> web.StreamResponse:
        cfg = self.config
        delay = cfg.latency_ms
        if cfg.jitter_ms:
            delay += self.jitter_rng.uniform(0, cfg.jitter_ms)
        if cfg.per_token_ms and not req.stream and fault is None:
            delay += cfg.per_token_ms * A.completion_tokens(answer)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if fault is not None:
            if fault == "length":
                answer, finish, stop_seq = answer[: len(answer) // 2], "length", None
            elif fault == "content_filter":
                answer, finish, stop_seq = "", "content_filter", None
            else:
                return await self._fault_response(request, req, anth, fault)
        ctoks = A.completion_tokens(answer)
        self.answered += 1
        self.prompt_tokens += ptoks
        self.completion_tokens += ctoks
        self.cost_usd += ptoks / 1000 * cfg.cost_per_1k_input + ctoks / 1000 * cfg.cost_per_1k_output
        if req.stream:
            return await self._stream(request, req, anth, answer, finish, stop_seq, ptoks, ctoks)
        if anth:
            payload = anthropic_body(req, answer, finish, stop_seq, ptoks, ctoks, self.requests)
        else:
            payload = openai_body(req, answer, finish, ptoks, ctoks, self.requests)
        return web.Response(body=json.dumps(payload, ensure_ascii=False).encode(), content_type=_JSON)

    async def _stream(self, request, req, anth, answer, finish, stop_seq, ptoks, ctoks) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        make = make_sse_anthropic if anth else make_sse_openai
        events = make(req, answer, finish, stop_seq, ptoks, ctoks, self.requests)
        pt = self.config.per_token_ms
        if pt:
            for ev, ntok in events:
                if ntok:
                    await asyncio.sleep(pt * ntok / 1000.0)
                await resp.write(ev)
        else:
            await resp.write(b"".join(ev for ev, _ in events))
        await resp.write_eof()
        return resp

    async def _fault_response(self, request: web.Request, req: Request, anth: bool, fault: str) -> web.StreamResponse:
        if fault == "429":
            return self._error(anth, 429, "Rate limit reached for requests. Please try again in 1s.",
                               kind="requests", code="rate_limit_exceeded", headers=_RETRY_1S)
        if fault == "insufficient_quota":
            if anth:
                return self._error(anth, 400, "Your credit balance is too low to access the Anthropic API. "
                                   "Please go to Plans & Billing to upgrade or purchase credits.")
            return self._error(anth, 429, "You exceeded your current quota, please check your plan and billing details.",
                               kind="insufficient_quota", code="insufficient_quota")
        if fault == "400":
            return self._error(anth, 400, "Invalid request (simulated).")
        if fault == "500":
            return self._error(anth, 500, "The server had an error while processing your request. Sorry about that!")
        if fault == "503":
            return self._error(anth, 503, "The engine is currently overloaded, please try again later.",
                               code="service_unavailable")
        if fault == "529":
            return self._error(anth, 529, "Overloaded")
        if fault == "error_body":
            body = anthropic_error(500, "Internal server error (simulated).") if anth else \
                openai_error(500, "The server had an error while processing your request.")
            if req.stream:
                return await self._raw_stream(request, b"data: " + body + b"\n\n")
            return web.Response(body=body, content_type=_JSON)
        if fault == "malformed":
            body = b"<html><body>502 Bad Gateway (simulated: this is not JSON)</body></html>"
            if req.stream:
                return await self._raw_stream(request, b"data: {\"choices\": [{\"delta\": {\"content\": \"x\n\n")
            return web.Response(body=body, content_type=_JSON)
        if fault == "truncated":
            mode, answer = A.compute_answer(req.system, req.user, req.response_format)
            ptoks, ctoks = A.prompt_tokens(req.contents), A.completion_tokens(answer)
            if req.stream:
                make = make_sse_anthropic if anth else make_sse_openai
                data = b"".join(ev for ev, _ in make(req, answer, "stop", None, ptoks, ctoks, self.requests))
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            else:
                payload = (anthropic_body(req, answer, "stop", None, ptoks, ctoks, self.requests) if anth
                           else openai_body(req, answer, "stop", ptoks, ctoks, self.requests))
                data = json.dumps(payload).encode()
                resp = web.StreamResponse(headers={"Content-Type": _JSON})
                resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            _drop(request, hard=False)
            return resp
        # "reset": close the connection without answering
        _drop(request)
        return web.Response(status=500)

    async def _raw_stream(self, request: web.Request, data: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(data)
        await resp.write_eof()
        return resp

    # -- admin endpoints ----------------------------------------------------------------------------
    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def post_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            cfg = self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}}, status=400)
        shown = asdict(cfg)
        shown["api_key"] = "***" if cfg.api_key else None
        return web.json_response(shown)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(False, 401, "Incorrect API key provided.", code="invalid_api_key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "dbt-pg-llm-simulator"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})


def _drop(request: web.Request, hard: bool = True) -> None:
    """Close the TCP connection: hard = abort with RST (connection reset), else a FIN after what was sent."""
    transport = request.transport
    if transport is None:
        return
    if not hard:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def make_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=300 * 1024 * 1024)  # batch input files: up to 256 MB
    app[SIMULATOR_KEY] = sim
    r = app.router
    for prefix in ("/v1", ""):
        r.add_post(prefix + "/chat/completions", sim.openai)
        r.add_post(prefix + "/messages", sim.anthropic)
        r.add_get(prefix + "/models", sim.models)
    add_batch_routes(app, sim.batches)
    r.add_get("/_stats", sim.get_stats)
    r.add_post("/_reset", sim.post_reset)
    r.add_post("/_config", sim.post_config)
    r.add_get("/_health", sim.health)
    return app


async def start_runner(sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start serving ``sim`` on host:port (0 = a free port); return (runner, actual port)."""
    runner = web.AppRunner(make_app(sim), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    actual = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            actual = addr[1]
            break
    return runner, actual
