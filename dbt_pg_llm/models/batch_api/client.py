"""What both batch wire protocols share: the batch's state, one result line, HTTP with retries, limits.

A ``BatchClient`` is synchronous (a dbt thread polls and downloads; no event loop needed) and uses
httpx with tenacity as its only retry layer: 429 / 5xx / connection errors are retried with
exponential backoff (honouring Retry-After), anything else raises ``ModelError`` at once.
Request bodies come from the model's provider (``Provider.build_body``), so a batch asks exactly
what a normal request would (same cache key, same answer shape).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import httpx
import tenacity

from ...errors import ErrorKind, ModelError
from ...urls import endpoint, split_credentials
from ..config import ModelConfig
from ..model_io import ModelInput
from ..providers import provider_for
from ..providers.base import classify_http_error, classify_transport_error

__all__ = ["BatchInfo", "BatchLine", "BatchClient", "client_for"]

# Statuses after which a batch produces no more results, in either protocol's words.
ENDED_STATUSES = frozenset({"completed", "failed", "expired", "cancelled", "ended"})


@dataclass
class BatchInfo:
    """A provider batch as last seen: ``status`` in the provider's words, ``ended`` once final."""

    id: str
    status: str
    created_at: float = 0.0  # epoch seconds
    total: int = 0
    tag: str | None = None  # our idempotency id, when the provider echoes it (OpenAI metadata)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES


@dataclass
class BatchLine:
    """One request's outcome: the provider's answer body, or why there is none."""

    custom_id: str
    body: dict | None = None
    error_kind: ErrorKind = ErrorKind.NONE
    message: str | None = None
    http_status: int | None = None


class BatchClient:
    """Base of the two protocols (``openai_batches``, ``anthropic_batches``)."""

    provider = "base"
    max_requests = 0
    max_bytes = 0
    attempts = 4
    batches_path = ""  # "/batches" or "/messages/batches"
    cursor_param = ""  # the list endpoint's "after this id" parameter
    page_size = 100

    def __init__(self, config: ModelConfig, model_name: str, transport: httpx.BaseTransport | None = None):
        self.config = config
        self.model_name = model_name
        self.base_url = (config.base_url or "").rstrip("/")
        self._provider = provider_for(config, model_name)  # only for build_body: never sends
        self._http_client = httpx.Client(transport=transport, timeout=httpx.Timeout(max(config.timeout_ms / 1000, 60)))

    def close(self) -> None:
        self._http_client.close()

    # -- requests ---------------------------------------------------------------------------------
    def request_body(self, inp: ModelInput) -> dict:
        inp = inp.with_defaults(self.config.temperature, self.config.max_tokens)
        body, _ = self._provider.build_body(inp)
        body.pop("stream", None)  # batch answers are whole objects
        body.pop("stream_options", None)
        return body

    def encode(self, custom_id: str, body: dict) -> bytes:  # pragma: no cover - abstract
        """One request as it counts against the provider's byte limit."""
        raise NotImplementedError

    def chunks(self, items: Iterable[tuple[str, dict]]) -> Iterator[list[tuple[str, dict, bytes]]]:
        """Split (custom_id, body) pairs into batches within the request-count and byte limits."""
        chunk: list[tuple[str, dict, bytes]] = []
        size = 0
        for custom_id, body in items:
            data = self.encode(custom_id, body)
            if chunk and (len(chunk) >= self.max_requests or size + len(data) > self.max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append((custom_id, body, data))
            size += len(data)
        if chunk:
            yield chunk

    # -- the protocol (abstract) -----------------------------------------------------------------
    def submit(self, tag: str, chunk: list[tuple[str, dict, bytes]]) -> BatchInfo:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def info(data: dict) -> BatchInfo:  # pragma: no cover - abstract
        """A batch object of the protocol -> BatchInfo."""
        raise NotImplementedError

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self.info(self.json("GET", f"{self.batches_path}/{batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        return self.info(self.json("POST", f"{self.batches_path}/{batch_id}/cancel"))

    def list(self, since: float) -> Iterator[BatchInfo]:
        """Batches created at or after ``since`` (epoch seconds), newest first (both APIs page
        newest first with a cursor: the last id of the previous page)."""
        after = None
        while True:
            page = self.json("GET", self.batches_path,
                             params={"limit": self.page_size, **({self.cursor_param: after} if after else {})})
            for item in page.get("data") or []:
                info = self.info(item)
                if info.created_at < since:
                    return
                yield info
            if not page.get("has_more") or not page.get("data"):
                return
            after = page["data"][-1]["id"]

    def results(self, info: BatchInfo) -> Iterator[BatchLine]:  # pragma: no cover
        raise NotImplementedError

    def find(self, tag: str, since: float, count: int, custom_ids: set[str],
             known_ids: set[str] = frozenset()) -> BatchInfo | None:  # pragma: no cover
        """The batch submitted with ``tag`` (``count`` requests, ``custom_ids``, created at or after
        ``since``, none of ``known_ids``) when a run died before recording its id; None if none."""
        raise NotImplementedError

    # -- HTTP -------------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        return {k: v for k, v in self._provider.wire_headers().items() if k != "content-type"}

    def http(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One API call with retries on recoverable failures; ModelError otherwise."""
        # api_url's query stays after the path; its user:password@ is in the headers (wire_headers)
        url = path if path.startswith("http") else split_credentials(endpoint(self.base_url, path))[0]
        extra_headers = kwargs.pop("headers", None) or {}

        def once() -> httpx.Response:
            try:
                response = self._http_client.request(method, url, headers={**self.headers(), **extra_headers},
                                                     **kwargs)
            except httpx.HTTPError as exc:
                raise classify_transport_error(exc, self.model_name, self.config.timeout_ms) from None
            if response.status_code >= 300:
                raise classify_http_error(response.status_code, response.content, response.headers, self.model_name)
            return response

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ModelError) and e.recoverable),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=_wait, reraise=True)
        return retrying(once)

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.http(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ModelError(ErrorKind.API, f"{method} {path}: the answer is not JSON", model=self.model_name) from None


def _wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    hinted = getattr(error, "retry_after", None)
    backoff = min(0.5 * 2 ** (state.attempt_number - 1), 8.0)
    return min(float(hinted), 60.0) if hinted is not None else backoff


def jsonl(data: bytes) -> Iterator[dict]:
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)


def client_for(config: ModelConfig, model_name: str, transport: httpx.BaseTransport | None = None) -> BatchClient:
    """The batch client of a model's wire protocol."""
    if config.provider == "anthropic":
        from .anthropic_batches import AnthropicBatchClient

        return AnthropicBatchClient(config, model_name, transport)
    from .openai_batches import OpenAIBatchClient

    return OpenAIBatchClient(config, model_name, transport)
