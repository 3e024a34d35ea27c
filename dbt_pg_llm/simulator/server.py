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
import dataclasses
from dataclasses import asdict, fields

from aiohttp import web

from . import answers as A
from . import embeddings, packing
from .batch_api import BatchApi, add_batch_routes
from .catalog import DEFAULT_MODELS, anthropic_model, anthropic_model_list, openai_model, openai_model_list
from .config import SimulatorConfig
from .errors import BAD_GATEWAY_HTML, ApiError, fault_error
from .faults import FaultPicker, RateLimiter, go_duration, rate_limit_headers
from .prompt_cache import PromptCache
from .streams import anthropic_error_event, make_sse_anthropic, make_sse_openai, openai_error_event
from .validate import check_request, model_not_found
from .wire import REFUSAL_TEXT, Reply, Request, anthropic_body, openai_body, parse_request

__all__ = ["SimulatorConfig", "Simulator", "make_app", "start_runner", "MODELS"]

MODELS = DEFAULT_MODELS
_JSON = "application/json"
SIMULATOR_KEY = web.AppKey("simulator", object)


class Simulator:
    """State of one simulated provider: config, ledger, fault picker, rate limiter."""

    def __init__(self, config: SimulatorConfig | None = None):
        self.config = config or SimulatorConfig()
        self._apply_config()
        self.batches = BatchApi(self)
        self.prompt_cache = PromptCache()
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
        self.prompt_tokens = 0  # every input token, prompt-cache reads and writes included
        self.completion_tokens = 0
        self.cached_tokens = 0  # of prompt_tokens: read from the prompt cache (prompt_cache.py)
        self.cache_write_tokens = 0  # of prompt_tokens: written to it (Anthropic)
        self.cost_usd = 0.0
        self.embedding_inputs = 0  # inputs of /v1/embeddings requests (embeddings.py)
        self.prompt_cache.reset()
        self.fault_counts: dict[str, int] = {}
        self.answered = 0
        self.rate_limited = 0
        self.unauthorized = 0
        self.rejected = 0
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
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": self.cost_usd,
            "embedding_inputs": self.embedding_inputs,
            "faults": dict(self.fault_counts),
            "answered": self.answered,
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "rejected": self.rejected,
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

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await embeddings.handle(self, request)

    async def azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await embeddings.handle(self, request, deployment=request.match_info["deployment"])

    async def azure(self, request: web.Request) -> web.StreamResponse:
        """Azure OpenAI: ``/openai/deployments/{deployment}/chat/completions?api-version=...`` with an
        ``api-key`` header; the deployment names the model (a body ``model`` is ignored, as Azure does).
        No api-version or an unknown deployment is a 404 in Azure's own shape."""
        deployment = request.match_info["deployment"]
        if not request.query.get("api-version"):
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        models = self.config.models
        if models is not None and deployment not in models:
            self.rejected += 1
            return web.json_response({"error": {
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does not exist. If you created the deployment "
                           "within the last 5 minutes, please wait a moment and try again."}}, status=404)
        return await self._handle(request, False, deployment=deployment)

    def _id_headers(self, anth: bool, rid: str) -> dict[str, str]:
        return {"request-id": rid} if anth else {"x-request-id": rid}

    def _error(self, anth: bool, rid: str, error: ApiError) -> web.Response:
        headers = {**self._id_headers(anth, rid), **error.headers}
        return web.Response(status=error.status, body=error.body(anth, rid), content_type=_JSON, headers=headers)

    def _authorized(self, request: web.Request, azure: bool = False) -> bool:
        key = self.config.api_key
        if not key:
            return True
        h = request.headers
        if azure:  # Azure takes the resource key in api-key (or an Entra bearer token)
            return h.get("api-key") == key or h.get("Authorization") == f"Bearer {key}"
        return h.get("Authorization") == f"Bearer {key}" or h.get("x-api-key") == key

    async def _handle(self, request: web.Request, anth: bool, deployment: str | None = None) -> web.StreamResponse:
        self.requests += 1
        seq = self.requests
        rid = f"req_sim{seq:016x}"
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = None
            if deployment is not None and isinstance(body, dict):
                body["model"] = deployment
            cfg = self.config
            problem = check_request(body, anth, cfg.models, cfg.reject_params)
            req = parse_request(body, anth) if problem is None else None
            if req is not None:
                req.seq = seq
                sha = A.prompt_sha256(req.user)
                self.by_prompt[sha] = self.by_prompt.get(sha, 0) + 1
            if not self._authorized(request, azure=deployment is not None):
                self.unauthorized += 1
                msg = "invalid x-api-key" if anth else \
                    "Incorrect API key provided. You can find your API key in your account settings."
                return self._error(anth, rid, ApiError(401, msg, code="invalid_api_key"))
            if problem is not None:
                self.rejected += 1
                return self._error(anth, rid, problem)
            return await self._answer(request, req, anth, rid)
        finally:
            self.in_flight -= 1

    def reply_for(self, req: Request) -> Reply:
        """The model's answer to ``req``: stop sequences applied, cut at max_tokens."""
        mode, text = packing.answer(req.system, req.user, req.response_format)
        rate = self.config.model_error_rates.get(req.model, 0.0)
        wrong = A.mistaken_label(req.model, req.system, req.user, text, rate, self.config.seed) \
            if rate and mode == "labels" else None
        if wrong is not None:
            text, req.mistaken = wrong, True
        finish, stop_seq = "stop", None
        for s in req.stop:
            i = text.find(s) if s else -1
            if i >= 0 and (stop_seq is None or i < text.find(stop_seq)):
                stop_seq = s
        if stop_seq is not None:
            text = text[: text.find(stop_seq)]
        if req.max_tokens is not None and A.completion_tokens(text) > req.max_tokens:
            text, finish, stop_seq = A.cut_to_tokens(text, req.max_tokens), "length", None
        return Reply(text, finish, stop_seq, A.prompt_tokens(req.contents), A.completion_tokens(text))

    async def _answer(self, request: web.Request, req: Request, anth: bool, rid: str) -> web.StreamResponse:
        cfg = self.config
        reply = self.reply_for(req)
        if self.limiter.active:
            tokens = reply.ptoks + reply.ctoks * req.n
            wait, which = self.limiter.admit(tokens)
            if wait > 0:
                self.rate_limited += 1
                requested = 1 if which == "requests" else tokens
                return self._error(anth, rid, self._rate_limited(req, anth, wait, which, requested))

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
                return await self._respond(request, req, anth, rid, reply, fault)
            finally:
                self.active -= 1

    def _rate_limited(self, req: Request, anth: bool, wait: float, which: str, requested: int) -> ApiError:
        bucket = self.limiter.bucket(which)
        limit = int(bucket.capacity)
        unit = "RPM" if which == "requests" else "TPM"
        message = (f"Rate limit reached for {req.model} in organization org-simulator on {which} per min ({unit}): "
                   f"Limit {limit}, Used {limit - max(0, int(bucket.level))}, Requested {requested}. "
                   f"Please try again in {go_duration(wait)}. Visit https://platform.openai.com/account/rate-limits "
                   "to learn more.")
        anth_message = (f"This request would exceed the rate limit for your organization of {limit} {which} per "
                        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
                        "response headers for current usage.")
        headers = rate_limit_headers(self.config.rate_limit_headers, anth, wait, which, limit, bucket.level)
        return ApiError(429, message, anth_message, kind=which, code="rate_limit_exceeded", headers=headers)

    async def _respond(self, request, req: Request, anth: bool, rid: str, reply: Reply,
                       fault: str | None) -> web.StreamResponse:
        cfg = self.config
        delay = cfg.latency_ms
        if cfg.jitter_ms:
            delay += self.jitter_rng.uniform(0, cfg.jitter_ms)
        if cfg.per_token_ms and not req.stream and fault is None:
            delay += cfg.per_token_ms * reply.ctoks
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if fault == "length":
            text = reply.text[: len(reply.text) // 2]
            reply = Reply(text, "length", None, reply.ptoks, A.completion_tokens(text))
        elif fault == "content_filter":
            reply = Reply("", "content_filter", None, reply.ptoks, A.completion_tokens(""))
        elif fault == "refusal":
            reply = Reply(REFUSAL_TEXT, "refusal", None, reply.ptoks, A.completion_tokens(REFUSAL_TEXT))
        elif fault is not None:
            return await self._fault_response(request, req, anth, rid, reply, fault)
        # what a real provider bills: an answer, even a refusal or a cut one; never an HTTP error
        reply = self._with_prompt_cache(req, anth, reply)
        ctoks = reply.ctoks * req.n
        self.answered += 1
        self.prompt_tokens += reply.ptoks
        self.completion_tokens += ctoks
        self.cached_tokens += reply.cached
        self.cache_write_tokens += reply.cache_write
        self.cost_usd += cfg.cost_of(reply.ptoks, ctoks, reply.cached, reply.cache_write)
        headers = self._id_headers(anth, rid)
        if self.limiter.active and cfg.rate_limit_headers == "x-ratelimit":
            headers.update(self.limiter.state_headers(anth))
        if req.stream:
            make = make_sse_anthropic if anth else make_sse_openai
            return await self._stream(request, make(req, reply), headers)
        payload = anthropic_body(req, reply) if anth else openai_body(req, reply)
        return web.Response(body=json.dumps(payload, ensure_ascii=False).encode(), content_type=_JSON,
                            headers=headers)

    def _with_prompt_cache(self, req: Request, anth: bool, reply: Reply) -> Reply:
        """The answer's usage with what the provider's prompt cache read and wrote (prompt_cache.py)."""
        if anth:
            read, write = self.prompt_cache.anthropic(req.model, list(req.cache_points), reply.ptoks)
        else:
            read, write = self.prompt_cache.openai(req.model, req.contents, reply.ptoks), 0
        return dataclasses.replace(reply, cached=read, cache_write=write) if read or write else reply

    async def _stream(self, request: web.Request, events: list[tuple[bytes, int]], headers: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers})
        await resp.prepare(request)
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

    async def _fault_response(self, request: web.Request, req: Request, anth: bool, rid: str, reply: Reply,
                              fault: str) -> web.StreamResponse:
        wait = self.config.fault_retry_after_s
        wait_headers = rate_limit_headers(self.config.rate_limit_headers, anth, wait, "requests", None, 0)
        error = fault_error(fault, anth, reply.ptoks, wait, wait_headers)
        if error is not None:
            return self._error(anth, rid, error)
        ids = self._id_headers(anth, rid)
        if fault == "error_body":  # an error inside a 200 answer (or a stream that fails after it started)
            if req.stream:
                data = (anthropic_error_event(req, "overloaded_error", "Overloaded", reply.ptoks) if anth
                        else openai_error_event(ApiError(500, "The server had an error while processing your "
                                                              "request.").body(False)))
                return await self._raw_stream(request, data, ids)
            body = ApiError(500, "The server had an error while processing your request.",
                            "Internal server error (simulated).").body(anth, rid)
            return web.Response(body=body, content_type=_JSON, headers=ids)
        if fault == "malformed":  # a proxy's error page instead of the API's answer
            return web.Response(status=502, body=BAD_GATEWAY_HTML, content_type="text/html")
        if fault == "truncated":
            if req.stream:
                make = make_sse_anthropic if anth else make_sse_openai
                data = b"".join(ev for ev, _ in make(req, reply))
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **ids})
            else:
                payload = anthropic_body(req, reply) if anth else openai_body(req, reply)
                data = json.dumps(payload).encode()
                resp = web.StreamResponse(headers={"Content-Type": _JSON, **ids})
                resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            _drop(request, hard=False)
            return resp
        # "reset": close the connection without answering
        _drop(request)
        return web.Response(status=500)

    async def _raw_stream(self, request: web.Request, data: bytes, headers: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
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

    def _served(self) -> tuple[str, ...]:
        return self.config.models if self.config.models is not None else MODELS

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: Anthropic's shape when the client speaks Anthropic (anthropic-version
        header), else OpenAI's."""
        anth = "anthropic-version" in request.headers
        rid = f"req_sim{self.requests:016x}models"
        if not self._authorized(request):
            msg = "invalid x-api-key" if anth else "Incorrect API key provided."
            return self._error(anth, rid, ApiError(401, msg, code="invalid_api_key"))
        model_id = request.match_info.get("model_id")
        if model_id is not None:  # GET /v1/models/{id}
            if self.config.models is not None and model_id not in self.config.models:
                return self._error(anth, rid, model_not_found(model_id))
            payload = anthropic_model(model_id) if anth else openai_model(model_id)
            return web.json_response(payload, headers=self._id_headers(anth, rid))
        if anth:
            q = request.query
            try:
                limit = max(1, min(1000, int(q.get("limit", 20))))
            except ValueError:
                return self._error(True, rid, ApiError(400, "", "limit: Input should be a valid integer"))
            payload = anthropic_model_list(self._served(), limit, q.get("after_id"), q.get("before_id"))
        else:
            payload = openai_model_list(self._served())
        return web.json_response(payload, headers=self._id_headers(anth, rid))


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
        r.add_post(prefix + "/embeddings", sim.embeddings)  # embeddings.py
        r.add_get(prefix + "/models", sim.models)
        r.add_get(prefix + "/models/{model_id}", sim.models)
    r.add_post("/openai/deployments/{deployment}/chat/completions", sim.azure)
    r.add_post("/openai/deployments/{deployment}/embeddings", sim.azure_embeddings)
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
