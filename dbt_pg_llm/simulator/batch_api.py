"""The simulator's batch APIs, in the providers' real shapes.

OpenAI Batch API: ``POST /v1/files`` (multipart: ``purpose=batch`` + ``file`` = JSONL of
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST /v1/batches`` (``input_file_id``, ``endpoint``,
``completion_window``, ``metadata``), ``GET /v1/batches`` (``limit``, ``after``; newest first),
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. Statuses: validating -> in_progress ->
completed | expired | failed (bad input file), or cancelling -> cancelled. Output file lines:
``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}``;
error file lines: a non-200 ``response`` or ``"error": {"code", "message"}`` (``batch_expired``).

Anthropic Message Batches: ``POST /v1/messages/batches`` (``{"requests": [{"custom_id", "params"}]}``),
``GET /v1/messages/batches`` (``limit``, ``after_id``), ``GET /v1/messages/batches/{id}``,
``POST .../{id}/cancel``, ``GET .../{id}/results`` (JSONL of ``{"custom_id", "result": {"type":
"succeeded", "message"} | {"type": "errored", "error"} | {"type": "canceled"} | {"type": "expired"}}``).
``processing_status``: in_progress -> ended, or canceling -> ended.

Knobs (``SimulatorConfig``): ``batch_delay_s`` (a batch ends that long after creation),
``batch_error_rate`` (share of requests answered with a 500 error), ``batch_expire_rate`` (share of
requests left unprocessed when the batch ends; > 0 makes an OpenAI batch end ``expired``),
``batch_discount`` (batch price = list price x discount, 0.5 like the real APIs). Scripted
``[[fault:KIND]]`` markers in a prompt make that request fail too. Processed requests are billed in
``/_stats`` (``batch_*`` counters, and added to ``cost_usd`` / tokens).
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from . import answers as A
from . import embeddings as E
from .errors import ApiError, anthropic_error, openai_error
from .validate import check_request
from .wire import Request, anthropic_body, openai_body, parse_request

__all__ = ["BatchApi", "add_batch_routes", "OPENAI_MAX_REQUESTS", "OPENAI_MAX_FILE_BYTES",
           "ANTHROPIC_MAX_REQUESTS", "ANTHROPIC_MAX_BYTES"]

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
_JSON = "application/json"
_EMBEDDINGS = "/v1/embeddings"
_OPENAI_ENDPOINTS = ("/v1/chat/completions", _EMBEDDINGS)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _share(text: str, seed, salt: str) -> float:
    """A deterministic number in [0, 1) for one request (same prompt, same fate)."""
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


@dataclass
class _Batch:
    id: str
    anthropic: bool
    requests: list  # [(custom_id, body dict)]
    created: float
    due: float
    metadata: dict = field(default_factory=dict)
    input_file_id: str | None = None
    cancel_at: float | None = None
    ended_at: float | None = None
    status: str = "validating"
    errors: list = field(default_factory=list)
    results: list = field(default_factory=list)  # processed: [(custom_id, kind, payload)]
    output_file_id: str | None = None
    error_file_id: str | None = None
    endpoint: str = "/v1/chat/completions"  # OpenAI: every line's url; /v1/embeddings lines too


class BatchApi:
    """Batch state of one simulator (``sim``: the Simulator, for its config, fault picker and ledger)."""

    def __init__(self, sim):
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, dict] = {}
        self.batches: dict[str, _Batch] = {}
        self.created = 0
        self.requests = 0
        self.errors = 0
        self.expired = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.by_prompt: dict[str, int] = {}

    def stats(self) -> dict:
        return {"batches_created": self.created, "batch_requests": self.requests, "batch_errors": self.errors,
                "batch_expired": self.expired, "batch_prompt_tokens": self.prompt_tokens,
                "batch_completion_tokens": self.completion_tokens, "batch_cost_usd": self.cost_usd,
                "batch_by_prompt_sha256": dict(self.by_prompt)}

    # -- processing ---------------------------------------------------------------------------------
    def _advance(self, b: _Batch) -> None:
        """Bring a batch up to date: end it (processing every request) once due or cancelled."""
        if b.ended_at is not None:
            return
        now = time.time()
        if b.cancel_at is not None:
            done_share = min(1.0, (b.cancel_at - b.created) / max(b.due - b.created, 1e-9))
            self._finish(b, now, processed=int(len(b.requests) * done_share), cancelled=True)
        elif now >= b.due:
            self._finish(b, now, processed=len(b.requests), cancelled=False)
        elif b.status == "validating":
            b.status = "in_progress"

    def _finish(self, b: _Batch, now: float, processed: int, cancelled: bool) -> None:
        cfg = self.sim.config
        expired_any = False
        for i, (custom_id, body) in enumerate(b.requests):
            if i >= processed:
                b.results.append((custom_id, "canceled", None))
                continue
            if b.endpoint == _EMBEDDINGS:
                b.results.append(self._embedding(custom_id, body))
                continue
            problem = check_request(body, b.anthropic, cfg.models, cfg.reject_params)  # as strict as a call
            req = parse_request(body, b.anthropic) if problem is None else problem
            user = req.user if isinstance(req, Request) else custom_id
            if cfg.batch_expire_rate and _share(user, cfg.seed, "expire") < cfg.batch_expire_rate:
                b.results.append((custom_id, "expired", None))
                self.expired += 1
                expired_any = True
                continue
            b.results.append(self._process(custom_id, req, b.anthropic))
        b.ended_at = now
        if b.anthropic:
            b.status = "ended"
        else:
            b.status = "cancelled" if cancelled else ("expired" if expired_any else "completed")
            self._write_openai_files(b)

    def _process(self, custom_id: str, req, anth: bool) -> tuple:
        cfg = self.sim.config
        if isinstance(req, ApiError):
            self.errors += 1
            return custom_id, "errored", (req.status, (req.anthropic_message or req.message) if anth else req.message)
        fault = self.sim.picker.pick(req.user)
        if fault is not None or (cfg.batch_error_rate and _share(req.user, cfg.seed, "error") < cfg.batch_error_rate):
            self.errors += 1
            status = 400 if fault == "400" else 500
            return custom_id, "errored", (status, "Invalid request (simulated)." if status == 400
                                          else "The server had an error while processing your request.")
        reply = self.sim.reply_for(req)
        ptoks, ctoks = reply.ptoks, reply.ctoks * req.n
        cost = (ptoks / 1000 * cfg.cost_per_1k_input + ctoks / 1000 * cfg.cost_per_1k_output) * cfg.batch_discount
        self.requests += 1
        self.prompt_tokens += ptoks
        self.completion_tokens += ctoks
        self.cost_usd += cost
        sim = self.sim
        sim.prompt_tokens += ptoks
        sim.completion_tokens += ctoks
        sim.cost_usd += cost
        sha = A.prompt_sha256(req.user)
        self.by_prompt[sha] = self.by_prompt.get(sha, 0) + 1
        req.seq = self.requests
        body = anthropic_body(req, reply) if anth else openai_body(req, reply)
        return custom_id, "succeeded", body

    def _embedding(self, custom_id: str, body) -> tuple:
        """One /v1/embeddings line: checked like a live call, billed at the batch price in the ledger."""
        cfg = self.sim.config
        problem = E.check_body(body, tuple(cfg.models or ()))
        if problem is not None:
            self.errors += 1
            return custom_id, "errored", (problem.status, problem.message)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        fault = self.sim.picker.pick("\n".join(inputs))
        if fault is not None or (cfg.batch_error_rate and _share(inputs[0], cfg.seed, "error") < cfg.batch_error_rate):
            self.errors += 1
            status = 400 if fault == "400" else 500
            return custom_id, "errored", (status, "'$.input' is invalid (simulated fault)." if status == 400
                                          else "The server had an error while processing your request.")
        payload, tokens = E.answer_body(body)
        cost = cfg.cost_of(tokens, 0) * cfg.batch_discount
        self.requests += 1
        self.prompt_tokens += tokens
        self.cost_usd += cost
        self.sim.prompt_tokens += tokens
        self.sim.cost_usd += cost
        self.sim.embedding_inputs += len(inputs)
        for text in inputs:
            sha = A.prompt_sha256(text)
            self.by_prompt[sha] = self.by_prompt.get(sha, 0) + 1
        return custom_id, "succeeded", payload

    def _write_openai_files(self, b: _Batch) -> None:
        out, err = [], []
        for custom_id, kind, payload in b.results:
            line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": None, "error": None}
            if kind == "succeeded":
                line["response"] = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": payload}
                out.append(line)
            elif kind == "errored":
                status, message = payload
                line["response"] = {"status_code": status, "request_id": uuid.uuid4().hex,
                                    "body": json.loads(openai_error(status, message))}
                err.append(line)
            elif kind == "expired":
                line["error"] = {"code": "batch_expired",
                                 "message": "This request could not be executed before the completion window expired."}
                err.append(line)
            # cancelled before processing: in neither file, as with the real API
        if out:
            b.output_file_id = self._store_file(out, "batch_output", f"{b.id}_output.jsonl")
        if err:
            b.error_file_id = self._store_file(err, "batch_output", f"{b.id}_error.jsonl")

    def _store_file(self, lines: list, purpose: str, filename: str, data: bytes | None = None) -> str:
        if data is None:
            data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                               "filename": filename, "purpose": purpose, "data": data}
        return file_id

    def _new(self, anthropic: bool, requests: list, metadata: dict | None = None) -> _Batch:
        now = time.time()
        prefix = "msgbatch_" if anthropic else "batch_"
        b = _Batch(id=prefix + uuid.uuid4().hex[:24], anthropic=anthropic, requests=requests, created=now,
                   due=now + self.sim.config.batch_delay_s, metadata=dict(metadata or {}))
        self.batches[b.id] = b
        self.created += 1
        return b

    # -- shapes -------------------------------------------------------------------------------------
    def _openai_object(self, b: _Batch) -> dict:
        counts = {"total": len(b.requests), "completed": 0, "failed": 0}
        for _, kind, _ in b.results:
            if kind == "succeeded":
                counts["completed"] += 1
            elif kind in ("errored", "expired"):
                counts["failed"] += 1
        ended = int(b.ended_at) if b.ended_at else None
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint,
            "errors": {"object": "list", "data": b.errors} if b.errors else None,
            "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "created_at": int(b.created), "in_progress_at": int(b.created),
            "expires_at": int(b.created) + 86400,
            "finalizing_at": ended if b.status in ("completed", "expired") else None,
            "completed_at": ended if b.status == "completed" else None,
            "failed_at": ended if b.status == "failed" else None,
            "expired_at": ended if b.status == "expired" else None,
            "cancelling_at": int(b.cancel_at) if b.cancel_at else None,
            "cancelled_at": ended if b.status == "cancelled" else None,
            "request_counts": counts, "metadata": b.metadata or None,
        }

    def _anthropic_object(self, b: _Batch, request: web.Request) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if b.ended_at is None:
            counts["processing"] = len(b.requests)
        for _, kind, _ in b.results:
            counts[kind] += 1
        base = f"{request.scheme}://{request.host}"
        return {
            "id": b.id, "type": "message_batch",
            "processing_status": "ended" if b.ended_at is not None else ("canceling" if b.cancel_at else "in_progress"),
            "request_counts": counts, "ended_at": _iso(b.ended_at), "created_at": _iso(b.created),
            "expires_at": _iso(b.created + 86400), "archived_at": None, "cancel_initiated_at": _iso(b.cancel_at),
            "results_url": f"{base}/v1/messages/batches/{b.id}/results" if b.ended_at is not None else None,
        }

    def _anthropic_line(self, custom_id: str, kind: str, payload) -> dict:
        if kind == "succeeded":
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": payload}}
        if kind == "errored":
            status, message = payload
            return {"custom_id": custom_id, "result": {"type": "errored",
                                                       "error": json.loads(anthropic_error(status, message))}}
        return {"custom_id": custom_id, "result": {"type": kind}}

    # -- handlers -----------------------------------------------------------------------------------
    def guarded(self, handler, anth: bool):
        """``handler`` behind the simulator's API-key check (401 in the protocol's error shape)."""
        async def guard(request: web.Request) -> web.StreamResponse:
            if not self.sim._authorized(request):
                self.sim.unauthorized += 1
                return self._err(anth, 401, "invalid x-api-key" if anth else "Incorrect API key provided.")
            return await handler(request)

        return guard

    @staticmethod
    def _err(anth: bool, status: int, message: str) -> web.Response:
        body = anthropic_error(status, message) if anth else openai_error(status, message)
        return web.Response(status=status, body=body, content_type=_JSON)

    async def upload_file(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or upload is None or not hasattr(upload, "file"):
            return self._err(False, 400, "Expected multipart fields 'purpose'='batch' and 'file'.")
        data = upload.file.read()
        if len(data) > OPENAI_MAX_FILE_BYTES:
            return self._err(False, 400, f"File is larger than the {OPENAI_MAX_FILE_BYTES} byte limit for batch input.")
        file_id = self._store_file([], "batch", upload.filename or "input.jsonl", data)
        return web.json_response(self._file_object(file_id))

    def _file_object(self, file_id: str) -> dict:
        f = self.files[file_id]
        return {k: v for k, v in f.items() if k != "data"} | {"status": "processed", "status_details": None}

    async def get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None:
            return self._err(False, 404, "No such File object.")
        return web.json_response(self._file_object(f["id"]))

    async def file_content(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None:
            return self._err(False, 404, "No such File object.")
        return web.Response(body=f["data"], content_type="application/octet-stream")

    async def create_openai(self, request: web.Request) -> web.Response:
        body = await request.json()
        f = self.files.get(body.get("input_file_id") or "")
        if f is None:
            return self._err(False, 400, "input_file_id: no such file.")
        endpoint = body.get("endpoint")
        if endpoint not in _OPENAI_ENDPOINTS or body.get("completion_window") != "24h":
            return self._err(False, 400, "endpoint must be /v1/chat/completions or /v1/embeddings and "
                                         "completion_window 24h.")
        metadata = body.get("metadata") or {}
        if len(metadata) > 16 or any(len(str(k)) > 64 or len(str(v)) > 512 for k, v in metadata.items()):
            return self._err(False, 400, "metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.")
        requests, errors = [], []
        for n, line in enumerate(f["data"].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                requests.append((str(item["custom_id"]), item["body"]))
                if item.get("url") != endpoint or item.get("method") != "POST":  # one endpoint per batch
                    errors.append({"code": "invalid_url", "message": f"url must be {endpoint}", "line": n})
            except (ValueError, KeyError, TypeError):
                errors.append({"code": "invalid_json_line", "message": "not a JSON request line", "line": n})
        if len(requests) > OPENAI_MAX_REQUESTS:
            errors.append({"code": "too_many_requests", "message": f"at most {OPENAI_MAX_REQUESTS} requests per batch"})
        if len({c for c, _ in requests}) != len(requests):
            errors.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique"})
        b = self._new(False, requests, metadata)
        b.input_file_id, b.endpoint = f["id"], endpoint
        if errors:
            b.status, b.errors, b.ended_at = "failed", errors, time.time()
        return web.json_response(self._openai_object(b))

    def _get(self, request: web.Request, anth: bool) -> _Batch | None:
        b = self.batches.get(request.match_info["batch_id"])
        if b is None or b.anthropic != anth:
            return None
        self._advance(b)
        return b

    def _object(self, b: _Batch, request: web.Request) -> dict:
        return self._anthropic_object(b, request) if b.anthropic else self._openai_object(b)

    async def _retrieve(self, request: web.Request, anth: bool) -> web.Response:
        b = self._get(request, anth)
        return web.json_response(self._object(b, request)) if b else self._err(anth, 404, "No such batch.")

    async def _cancel(self, request: web.Request, anth: bool) -> web.Response:
        b = self._get(request, anth)
        if b is None:
            return self._err(anth, 404, "No such batch.")
        if b.ended_at is None and b.cancel_at is None:
            b.cancel_at = time.time()
            if not anth:
                b.status = "cancelling"
        return web.json_response(self._object(b, request))

    async def list_openai(self, request: web.Request) -> web.Response:
        items, more = self._listed(request, False, "after")
        data = [self._openai_object(b) for b in items]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None, "has_more": more})

    def _listed(self, request: web.Request, anth: bool, cursor: str) -> tuple[list, bool]:
        """One page of batches, newest first, after the cursor id; and whether more follow."""
        newest_first = sorted((b for b in self.batches.values() if b.anthropic == anth),
                              key=lambda b: b.created, reverse=True)
        after = request.query.get(cursor)
        if after:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        limit = max(1, min(int(request.query.get("limit", 20)), 1000))
        items = newest_first[:limit]
        for b in items:
            self._advance(b)
        return items, len(newest_first) > limit

    async def create_anthropic(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > ANTHROPIC_MAX_BYTES:
            return self._err(True, 413, f"Batch is larger than {ANTHROPIC_MAX_BYTES} bytes.")
        body = json.loads(raw)
        items = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return self._err(True, 400, "requests: a non-empty array is required")
        if len(items) > ANTHROPIC_MAX_REQUESTS:
            return self._err(True, 400, f"requests: at most {ANTHROPIC_MAX_REQUESTS} requests per batch")
        requests = []
        for item in items:
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 64 \
                    or not all(c.isalnum() or c in "_-" for c in custom_id):
                return self._err(True, 400, "custom_id: 1-64 characters of letters, digits, '_' and '-'")
            params = item.get("params")
            if "url" in item or not isinstance(params, dict) or "messages" not in params:
                # Message Batches carry messages requests only: an embeddings line (OpenAI's shape, or
                # params with an input array) is refused whole, as Anthropic refuses a malformed request
                field_ = "url" if "url" in item else "params.messages"
                why = "Extra inputs are not permitted" if "url" in item else "Field required"
                return self._err(True, 400, f"requests.{len(requests)}.{field_}: {why}")
            requests.append((custom_id, params))
        if len({c for c, _ in requests}) != len(requests):
            return self._err(True, 400, "custom_id values must be unique within a batch")
        b = self._new(True, requests)
        b.status = "in_progress"
        return web.json_response(self._anthropic_object(b, request))

    async def list_anthropic(self, request: web.Request) -> web.Response:
        items, more = self._listed(request, True, "after_id")
        data = [self._anthropic_object(b, request) for b in items]
        return web.json_response({"data": data, "has_more": more,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def results_anthropic(self, request: web.Request) -> web.Response:
        b = self._get(request, True)
        if b is None:
            return self._err(True, 404, "No such batch.")
        if b.ended_at is None:
            return self._err(True, 400, "Batch is still processing; results are available once it has ended.")
        data = "".join(json.dumps(self._anthropic_line(*r), ensure_ascii=False) + "\n" for r in b.results)
        return web.Response(body=data.encode(), content_type="application/x-jsonl")


def add_batch_routes(app: web.Application, api: BatchApi) -> None:
    openai_routes = [("POST", "/files", api.upload_file), ("GET", "/files/{file_id}", api.get_file),
                     ("GET", "/files/{file_id}/content", api.file_content), ("POST", "/batches", api.create_openai),
                     ("GET", "/batches", api.list_openai),
                     ("GET", "/batches/{batch_id}", functools.partial(api._retrieve, anth=False)),
                     ("POST", "/batches/{batch_id}/cancel", functools.partial(api._cancel, anth=False))]
    anthropic_routes = [("POST", "/messages/batches", api.create_anthropic),
                        ("GET", "/messages/batches", api.list_anthropic),
                        ("GET", "/messages/batches/{batch_id}", functools.partial(api._retrieve, anth=True)),
                        ("POST", "/messages/batches/{batch_id}/cancel", functools.partial(api._cancel, anth=True)),
                        ("GET", "/messages/batches/{batch_id}/results", api.results_anthropic)]
    for prefix in ("/v1", ""):
        for anth, routes in ((False, openai_routes), (True, anthropic_routes)):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, api.guarded(handler, anth))
