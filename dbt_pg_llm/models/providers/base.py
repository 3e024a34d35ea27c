"""What every provider shares: the wire (wire.py), the result shape, and HTTP-error classification.

One provider per wire protocol (openai.py, anthropic.py). A provider turns a ModelInput into one HTTP
request and the answer into a ProviderResult, or raises ModelError with the right kind. It never
retries: RetryPolicy (retry.py) is the only retry layer; the wire underneath retries nothing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import httpx

from ...errors import ErrorKind, ModelError, redact
from ...urls import split_credentials
from ..config import ModelConfig
from ..model_io import ModelInput, TokenUsage
from .features import ModelFeatures
from .rate_limits import RateLimitState, rate_limit_state, retry_after_seconds
from .wire import TRANSPORT_ERRORS, WireResponse, wire_for

__all__ = ["ProviderResult", "Provider", "classify_http_error", "classify_transport_error"]

logger = logging.getLogger("dbt_pg_llm")


@dataclass
class ProviderResult:
    """A successful HTTP exchange. The text may still violate the response format: Model checks."""

    text: str | None
    finish_reason: str | None = None  # normalised: "stop" | "length" | "content_filter" | other
    prompt_tokens: int = 0  # every input token, prompt-cache reads and writes included
    completion_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache (billed at a discount)
    cache_write_tokens: int = 0  # input tokens written to it (Anthropic; billed at a premium)
    token_logprobs: list[float] | None = None
    first_token_logprob: float | None = None  # for label answers: the chosen label's probability
    http_status: int = 200
    refusal: str | None = None  # the model declined: the provider's explanation
    usage_reported: bool = True  # False: the server sent no usage, the token counts are 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> TokenUsage:
        return TokenUsage(self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.cache_write_tokens)


def classify_http_error(status: int, body: bytes, headers: Mapping[str, str], model: str) -> ModelError:
    """Map a non-2xx answer to a ModelError: 429 rate limits are recoverable, quota/400/401/403 are not."""
    message, err_type = _error_message(body)
    short = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    quota_words = ("insufficient_quota", "billing", "credit balance", "exceeded your current quota")
    if any(w in (err_type or "") or w in (message or "").lower() for w in quota_words):
        return ModelError(ErrorKind.QUOTA, f"quota exhausted ({short}); add credit or raise the limit",
                          http_status=status, model=model)
    if status == 429:
        return ModelError(ErrorKind.RATE_LIMITED, f"rate limited ({short})", http_status=status,
                          retry_after=retry_after_seconds(headers, message), model=model)
    if status in (401, 403):
        return ModelError(ErrorKind.API, f"authentication failed ({short}); check the model's api_key",
                          recoverable=False, http_status=status, model=model)
    if status == 404:
        return ModelError(ErrorKind.API, f"not found ({short}); check api_url and model_version",
                          recoverable=False, http_status=status, model=model)
    # OpenAI / vLLM: context_length_exceeded; llama.cpp's llama-server: exceed_context_size_error
    if status == 400 and any(t in (err_type or "") for t in ("context_length", "exceed_context_size")):
        return ModelError(ErrorKind.INVALID_INPUT, f"prompt too long for the model ({short}); shorten the prompt "
                          "or lower max_tokens", http_status=status, model=model)
    if status == 408:
        return ModelError(ErrorKind.TIMEOUT, f"request timeout ({short})", http_status=status, model=model)
    if status in (400, 413, 422):
        return ModelError(ErrorKind.INVALID_INPUT, f"request rejected ({short})", http_status=status, model=model)
    recoverable = status >= 500
    return ModelError(ErrorKind.API, f"server error ({short})" if recoverable else short,
                      recoverable=recoverable, http_status=status, retry_after=retry_after_seconds(headers, message),
                      model=model)


def _error_message(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _plain_text(body), ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        kind = " ".join(str(err.get(k) or "") for k in ("type", "code"))
        return str(err.get("message") or kind)[:300], kind
    if isinstance(err, str):
        return err[:300], ""
    return "", ""


def _plain_text(body: bytes) -> str:
    """The first words of a non-JSON body (a gateway's HTML error page: its tags stripped)."""
    text = body[:2000].decode("utf-8", "replace")
    if "<" in text:
        text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
    return " ".join(text.split())[:200]


_CONNECT_FAILURES = ("ClientConnectorError", "ClientConnectorDNSError", "ClientConnectorCertificateError",
                     "ClientConnectorSSLError", "ConnectionRefusedError", "gaierror")
# timeouts that expire before a request is written: opening the connection, or waiting for the pool
_NEVER_SENT_TIMEOUTS = ("ConnectionTimeoutError", "ConnectTimeout", "PoolTimeout")
_DISCONNECTS = ("ServerDisconnectedError", "ClientOSError", "ClientConnectionResetError", "ClientPayloadError",
                "ContentLengthError", "TransferEncodingError", "ConnectionResetError", "RemoteProtocolError")


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify_transport_error(exc: Exception, model: str, timeout_ms: int, url: str | None = None) -> ModelError:
    """A request that got no HTTP answer (an aiohttp or httpx error). The cause chain decides: could
    not connect (refused, DNS, TLS) is reported at once as such, a dropped connection as a
    connection error, and only a real wait as a timeout."""
    chain = list(_causes(exc))
    names = {type(e).__name__ for e in chain}
    where = f" to {redact(url)}" if url else ""
    if names & set(_CONNECT_FAILURES) or isinstance(exc, httpx.ConnectError):
        detail = redact(str(chain[-1]) or type(chain[-1]).__name__)
        return ModelError(ErrorKind.API, f"could not connect{where} ({detail[:200]}); check api_url and that the "
                          "server is running", model=model, unsent=True)  # no connection: nothing was sent
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)) and not names & set(_DISCONNECTS):
        # a connect / pool timeout ran out before the request was written: provably not billed
        unsent = bool(names & set(_NEVER_SENT_TIMEOUTS))
        return ModelError(ErrorKind.TIMEOUT, f"no answer within timeout_ms={timeout_ms}"
                          + (" (no connection could be opened)" if unsent else ""), model=model, unsent=unsent)
    detail = redact(str(exc) or type(chain[-1]).__name__)
    return ModelError(ErrorKind.API, f"connection error{where} ({type(exc).__name__}: {detail[:200]})", model=model)


class Provider:
    """Base: sends through its wire (wire.py: aiohttp, or an injected httpx transport).

    ``complete(inp)`` sends one request and returns its answer or raises ModelError. When the
    server rejects an optional feature of it with a 400 (logprobs, a structured-output method; see
    features.py), the request is re-sent once without that feature, inside this one attempt.
    ``rate_observer`` (set by Model to its pool) sees the rate-limit headers of every answer.
    """

    name = "base"
    family = "openai"  # which structured-output methods apply: "openai" or "anthropic"

    def __init__(self, config: ModelConfig, model_name: str, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.model_name = model_name
        self._wire = wire_for(config, transport)
        # user:password@ of api_url leaves the URL (which error messages show) for a Basic header
        self.url, self.basic_auth = split_credentials(self.endpoint_url(config.base_url or ""))
        self._headers: dict[str, str] | None = None  # built on first use: the config never changes
        self.features = ModelFeatures(config.logprobs, config.structured_output, self.family)
        self.rate_observer: Callable[[RateLimitState], None] | None = None
        self._usage_warned = False

    def endpoint_url(self, base_url: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def headers(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_body(self, inp: ModelInput) -> tuple[dict, dict]:  # pragma: no cover - abstract
        """(the request body, what it uses: {"logprobs": bool, "structured": method, "schema": StructuredSchema})."""
        raise NotImplementedError

    def parse_body(self, data: dict, status: int, used: dict) -> ProviderResult:  # pragma: no cover
        raise NotImplementedError

    def wire_headers(self) -> dict[str, str]:
        """``headers()`` plus the Basic Authorization of api_url's ``user:password@``, if any (config
        validation refuses it beside an api_key sent as Authorization: a request has one)."""
        headers = self.headers()
        if self.basic_auth and not any(k.lower() == "authorization" for k in headers):
            headers["authorization"] = self.basic_auth
        return headers

    async def _send(self, content: bytes) -> WireResponse:
        if self._headers is None:
            self._headers = self.wire_headers()
        return await self._wire.post(self.url, content, self._headers)

    async def complete(self, inp: ModelInput) -> ProviderResult:
        while True:  # at most once per droppable feature: each adaptation removes one for good
            body, used = self.build_body(inp)
            try:
                return await self._exchange(body, used)
            except ModelError as error:
                dropped = self.features.adapt(error, used)
                if dropped is None:
                    raise
                logger.warning("model '%s': the server rejected %s (%s); sending requests without it from now on "
                               "(set %s in the model's config to choose)", self.model_name, dropped, error.message,
                               "logprobs: never" if dropped == "logprobs" else "structured_output")

    async def _exchange(self, body: dict, used: dict) -> ProviderResult:
        content_bytes = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = await self._send(content_bytes)
        except TRANSPORT_ERRORS as exc:
            raise classify_transport_error(exc, self.model_name, self.config.timeout_ms, self.url) from None
        self._observe(response.headers)
        content = response.content
        if response.status_code >= 300:
            raise classify_http_error(response.status_code, content, response.headers, self.model_name)
        data = self.decode(content, response.headers.get("content-type", ""))
        if isinstance(data, dict) and data.get("error"):
            message, _ = _error_message(json.dumps(data).encode())
            raise ModelError(ErrorKind.API, f"error in a 200 answer: {message or 'unknown error'}",
                             http_status=response.status_code, model=self.model_name)
        try:
            result = self.parse_body(data, response.status_code, used)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(ErrorKind.API, f"unexpected answer shape ({type(exc).__name__}: {exc})",
                             http_status=response.status_code, model=self.model_name) from None
        if not result.usage_reported and not self._usage_warned:
            self._usage_warned = True
            logger.warning("model '%s': the server reports no token usage; its calls are recorded with 0 tokens "
                           "and cost 0 (budgets and costs cannot count them)", self.model_name)
        return result

    def _observe(self, headers: Mapping[str, str]) -> None:
        if self.rate_observer is not None:
            state = rate_limit_state(headers)
            if state is not None:
                self.rate_observer(state)

    def decode(self, content: bytes, content_type: str) -> Any:
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise ModelError(ErrorKind.API, f"malformed answer body ({len(content)} bytes, not JSON)",
                             model=self.model_name) from None

    async def aclose(self) -> None:
        await self._wire.aclose()
