"""The simulator's ``/v1/embeddings`` (OpenAI shape; Azure's deployment route too).

Deterministic vectors in which texts sharing words are closer than unrelated texts: a hashed bag of
lower-cased words (each word adds +-1 at a few hashed positions), L2-normalised, so search and join
tests are meaningful. ``dimensions`` sets the length (text-embedding-3-*; ada-002 refuses it). ``encoding_format`` float (JSON numbers) or base64 (little-endian
float32). Limits as OpenAI documents them: at most ``MAX_INPUTS`` inputs per request, each at most
``MAX_INPUT_TOKENS`` tokens, ``MAX_REQUEST_TOKENS`` tokens in all; an empty input is a 400 for the
whole request (as OpenAI answers), which is what the client must isolate to one row. Faults: the simulator's
picker (``[[fault:429*2]]`` in an input, or random rates) with 429 / 500 / 503 / 400. An input
containing ``[[fault:nan]]`` gets a vector whose first value is NaN (a misbehaving OpenAI-compatible
server: the client must fail that row alone, not the request's COPY).

The ledger counts one request per call, every input's sha256 in ``by_prompt_sha256``, its tokens
as prompt tokens and the cost at the input price, as for chat.
"""
from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import answers as A
from .errors import ApiError

if TYPE_CHECKING:  # pragma: no cover
    from .server import Simulator

__all__ = ["MAX_INPUTS", "MAX_INPUT_TOKENS", "MAX_REQUEST_TOKENS", "embedding_of", "native_dims", "handle",
           "check_body", "answer_body", "NAN_FAULT"]

MAX_INPUTS = 2048  # OpenAI: "must not exceed ... 2048 dimensions"; the input array is limited to 2048 items
MAX_INPUT_TOKENS = 8192  # per input (text-embedding-3-*, ada-002)
MAX_REQUEST_TOKENS = 300_000  # summed over all inputs of one request
_HASHES_PER_WORD = 4
NAN_FAULT = "[[fault:nan]]"
# the faults an embeddings request can get (the others concern chat answers): status -> message
_HTTP_FAULTS = {"429": "Rate limit reached for requests (simulated fault).",
                "500": "The server had an error while processing your request.",
                "503": "The engine is currently overloaded, please try again later.",
                "400": "'$.input' is invalid (simulated fault)."}


def native_dims(model: str) -> int:
    return 3072 if "large" in model else 1536


def embedding_of(text: str, dims: int) -> list[float]:
    """The unit vector of ``text``: a hashed bag of its lower-cased words in ``dims`` positions
    (hashed straight into ``dims``, not cut from the native size: a cut would drop shared words)."""
    vec = [0.0] * dims
    for word in A._WORD_RE.findall(text.lower()) or [text]:
        digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=4 * _HASHES_PER_WORD).digest()
        for i in range(_HASHES_PER_WORD):
            n = int.from_bytes(digest[4 * i: 4 * i + 4], "little")
            vec[n % dims] += 1.0 if (n >> 31) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _problem(body: Any, models: tuple) -> ApiError | None:
    if not isinstance(body, dict):
        return ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return ApiError(400, "you must provide a model parameter", param="model")
    if models and model not in models:
        return ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                        code="model_not_found")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        return ApiError(400, "'$.input' is invalid. Please check the API reference: "
                             "https://platform.openai.com/docs/api-reference.", param="input")
    if len(inputs) > MAX_INPUTS:
        return ApiError(400, f"'$.input' is invalid: the array must have at most {MAX_INPUTS} items, "
                             f"got {len(inputs)}.", param="input")
    for i, text in enumerate(inputs):
        if not text.strip():
            return ApiError(400, f"'$.input[{i}]' is invalid: an input must not be empty.", param="input")
        if A.count_tokens(text) > MAX_INPUT_TOKENS:
            return ApiError(400, f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                                 f"requested {A.count_tokens(text)} tokens (input[{i}]). Please reduce your "
                                 "prompt; or completion length.", param="input", code="context_length_exceeded")
    if sum(A.count_tokens(t) for t in inputs) > MAX_REQUEST_TOKENS:
        return ApiError(400, f"Requested {sum(A.count_tokens(t) for t in inputs)} tokens, max "
                             f"{MAX_REQUEST_TOKENS} tokens per request", param="input",
                        code="max_tokens_per_request")
    dims = body.get("dimensions")
    if dims is not None:
        if "ada-002" in model:
            return ApiError(400, "This model does not support specifying dimensions.", param="dimensions")
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= native_dims(model):
            return ApiError(400, f"Invalid 'dimensions': {dims!r}; must be 1..{native_dims(model)}.",
                            param="dimensions")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return ApiError(400, "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
                        param="encoding_format")
    return None


def check_body(body: Any, models: tuple) -> ApiError | None:
    """Why an embeddings body would be refused (None: it is valid); the batch API checks its lines with it."""
    return _problem(body, models)


def answer_body(body: dict) -> tuple[dict, int]:
    """The answer to a valid embeddings body (``check_body`` passed) and its prompt tokens; the
    caller counts it in the ledger (a live call and a batch line count differently)."""
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    model = body["model"]
    dims = body.get("dimensions") or native_dims(model)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        vec = embedding_of(text, dims)
        if NAN_FAULT in text:
            vec[0] = math.nan
        value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(A.count_tokens(t) for t in inputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tokens


async def handle(sim: "Simulator", request: web.Request, deployment: str | None = None) -> web.StreamResponse:
    """Answer one embeddings request (counted in the ledger; rate limits and auth as for chat)."""
    sim.requests += 1
    rid = f"req_sim{sim.requests:016x}"
    try:
        body = await request.json()
    except Exception:
        body = None
    if deployment is not None and isinstance(body, dict):
        body["model"] = deployment
    if not sim._authorized(request, azure=deployment is not None):
        sim.unauthorized += 1
        return sim._error(False, rid, ApiError(401, "Incorrect API key provided.", code="invalid_api_key"))
    problem = _problem(body, tuple(sim.config.models or ()) if deployment is None else ())
    if problem is not None:
        sim.rejected += 1
        return sim._error(False, rid, problem)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    tokens = sum(A.count_tokens(t) for t in inputs)
    if sim.limiter.active:
        wait, which = sim.limiter.admit(tokens)
        if wait > 0:
            sim.rate_limited += 1
            limit = int(sim.limiter.bucket(which).capacity)
            return sim._error(False, rid, ApiError(
                429, f"Rate limit reached for {body['model']} on {which} per min: Limit {limit}. "
                     f"Please try again in {wait:.3f}s.", kind=which, code="rate_limit_exceeded",
                headers={"retry-after-ms": str(max(1, int(wait * 1000))), "retry-after": str(math.ceil(wait))}))
    fault = sim.picker.pick("\n".join(inputs))  # scripted ([[fault:429*2]] in an input) or random
    if fault in _HTTP_FAULTS:
        sim.fault_counts[fault] = sim.fault_counts.get(fault, 0) + 1
        status = int(fault)
        wait = sim.config.fault_retry_after_s
        headers = {"retry-after-ms": str(max(1, int(wait * 1000))), "retry-after": str(math.ceil(wait))} \
            if status == 429 else {}
        return sim._error(False, rid, ApiError(status, _HTTP_FAULTS[fault], code=None, headers=headers))
    if sim.config.latency_ms:
        import asyncio

        await asyncio.sleep(sim.config.latency_ms / 1000)
    model = body["model"]
    dims = body.get("dimensions") or native_dims(model)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        sha = A.prompt_sha256(text)
        sim.by_prompt[sha] = sim.by_prompt.get(sha, 0) + 1
        vec = embedding_of(text, dims)
        if NAN_FAULT in text:
            vec[0] = math.nan
        value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    sim.prompt_tokens += tokens
    sim.cost_usd += sim.config.cost_of(tokens, 0)
    sim.answered += 1
    sim.embedding_inputs += len(inputs)
    payload = {"object": "list", "data": data, "model": model,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return web.json_response(payload, headers={"x-request-id": rid})
