"""What every provider shares: the HTTP client, the result shape, and HTTP-error classification.

One provider per wire protocol (openai.py, anthropic.py). A provider turns a ModelInput into one HTTP
request and the answer into a ProviderResult, or raises ModelError with the right kind. It never
retries: RetryPolicy (retry.py) is the only retry layer, and the transport is built with retries=0.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config import ModelConfig
from ..errors import ErrorKind, ModelError, redact
from ..model_io import ModelInput

__all__ = ["ProviderResult", "Provider", "parse_retry_after", "make_client"]


@dataclass
class ProviderResult:
    """A successful HTTP exchange. The text may still violate the response format: Model checks."""

    text: str | None
    finish_reason: str | None = None  # normalised: "stop" | "length" | "content_filter" | other
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_logprobs: list[float] | None = None
    first_token_logprob: float | None = None  # for label answers: the chosen label's probability
    http_status: int = 200
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred, precise) or ``Retry-After`` (seconds or HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def make_client(config: ModelConfig, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An httpx client on the aiohttp transport (measured far faster than httpx's own pool at high
    concurrency), its pool sized to the model's concurrency, no retries underneath ours."""
    timeout_s = config.timeout_ms / 1000.0
    limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
    if transport is None:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits, retries=0)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout_s), limits=limits)


def classify_http_error(status: int, body: bytes, headers: httpx.Headers, model: str) -> ModelError:
    """Map a non-2xx answer to a ModelError: 429 rate limits are recoverable, quota/400/401/403 are not."""
    message, err_type = _error_message(body)
    short = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    quota_words = ("insufficient_quota", "billing", "credit balance", "exceeded your current quota")
    if any(w in (err_type or "") or w in (message or "").lower() for w in quota_words):
        return ModelError(ErrorKind.QUOTA, f"quota exhausted ({short}); add credit or raise the limit",
                          http_status=status, model=model)
    if status == 429:
        return ModelError(ErrorKind.RATE_LIMITED, f"rate limited ({short})", http_status=status,
                          retry_after=parse_retry_after(headers), model=model)
    if status in (401, 403):
        return ModelError(ErrorKind.API, f"authentication failed ({short}); check the model's api_key",
                          recoverable=False, http_status=status, model=model)
    if status == 404:
        return ModelError(ErrorKind.API, f"not found ({short}); check api_url and model_version",
                          recoverable=False, http_status=status, model=model)
    if status == 408:
        return ModelError(ErrorKind.TIMEOUT, f"request timeout ({short})", http_status=status, model=model)
    if status in (400, 413, 422):
        return ModelError(ErrorKind.INVALID_INPUT, f"request rejected ({short})", http_status=status, model=model)
    recoverable = status >= 500
    return ModelError(ErrorKind.API, f"server error ({short})" if recoverable else short,
                      recoverable=recoverable, http_status=status, retry_after=parse_retry_after(headers),
                      model=model)


def _error_message(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip(), ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        kind = " ".join(str(err.get(k) or "") for k in ("type", "code"))
        return str(err.get("message") or kind)[:300], kind
    if isinstance(err, str):
        return err[:300], ""
    return "", ""


def classify_transport_error(exc: Exception, model: str, timeout_ms: int) -> ModelError:
    cause = exc.__cause__
    cause_name = type(cause).__name__ if cause is not None else ""
    # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout: look at the real cause.
    disconnected = cause_name in ("ServerDisconnectedError", "ClientOSError", "ClientConnectionResetError",
                                  "ClientPayloadError", "ContentLengthError", "TransferEncodingError")
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)) and not disconnected:
        return ModelError(ErrorKind.TIMEOUT, f"no answer within timeout_ms={timeout_ms}", model=model)
    detail = redact(str(exc) or cause_name or type(exc).__name__)
    return ModelError(ErrorKind.API, f"connection error ({type(exc).__name__}: {detail[:200]})", model=model)


class Provider:
    """Base: owns one httpx client per event loop (aiohttp sessions are bound to their loop)."""

    name = "base"

    def __init__(self, config: ModelConfig, model_name: str, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.model_name = model_name
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}
        self.url = self.endpoint_url(config.base_url or "")

    def endpoint_url(self, base_url: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def headers(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_body(self, inp: ModelInput) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse_body(self, data: dict, status: int) -> ProviderResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def client(self) -> httpx.AsyncClient:
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = self._clients[loop_id] = make_client(self.config, self._transport)
        return client

    async def complete(self, inp: ModelInput) -> ProviderResult:
        body = json.dumps(self.build_body(inp), ensure_ascii=False).encode("utf-8")
        try:
            response = await self.client().post(self.url, content=body, headers=self.headers())
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, self.model_name, self.config.timeout_ms) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise classify_transport_error(exc, self.model_name, self.config.timeout_ms) from None
        content = response.content
        if response.status_code >= 300:
            raise classify_http_error(response.status_code, content, response.headers, self.model_name)
        data = self.decode(content, response.headers.get("content-type", ""))
        if isinstance(data, dict) and data.get("error"):
            message, _ = _error_message(content)
            raise ModelError(ErrorKind.API, f"error in a 200 answer: {message or 'unknown error'}",
                             http_status=response.status_code, model=self.model_name)
        try:
            return self.parse_body(data, response.status_code)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelError(ErrorKind.API, f"unexpected answer shape ({type(exc).__name__}: {exc})",
                             http_status=response.status_code, model=self.model_name) from None

    def decode(self, content: bytes, content_type: str) -> Any:
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise ModelError(ErrorKind.API, f"malformed answer body ({len(content)} bytes, not JSON)",
                             model=self.model_name) from None

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.aclose()
            except RuntimeError:  # its loop is gone; nothing left to close
                pass
