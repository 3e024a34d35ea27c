"""Anthropic Message Batches: ``POST /messages/batches`` with ``{"requests": [{"custom_id", "params"}]}``,
poll ``GET /messages/batches/{id}`` (``processing_status`` in_progress / canceling / ended), then
stream the results JSONL (``results_url``): one ``{"custom_id", "result": {"type": succeeded |
errored | canceled | expired, ...}}`` per request. Limits: 100,000 requests and 256 MB per batch.

A message batch has no metadata: our idempotency id is the prefix of every ``custom_id``, so a run
that died before recording a batch id recognises its batch by its request count and creation time
and, once it has ended, by the custom ids of its results.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Iterator

from ...errors import ErrorKind
from .client import BatchClient, BatchInfo, BatchLine, jsonl

__all__ = ["AnthropicBatchClient"]

_ERROR_TYPES = {"invalid_request_error": ErrorKind.INVALID_INPUT, "rate_limit_error": ErrorKind.RATE_LIMITED,
                "overloaded_error": ErrorKind.API, "api_error": ErrorKind.API}


def _epoch(text: str | None) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


class AnthropicBatchClient(BatchClient):
    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024 - 64 * 1024  # room for the envelope
    batches_path = "/messages/batches"
    cursor_param = "after_id"

    def encode(self, custom_id: str, body: dict) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": body}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")

    def submit(self, tag: str, chunk: list[tuple[str, dict, bytes]]) -> BatchInfo:
        payload = b'{"requests":[' + b",".join(encoded for _, _, encoded in chunk) + b"]}"
        attempts, self.attempts = self.attempts, 1  # never retried: see OpenAIBatchClient._create_once
        try:
            data = self.json("POST", "/messages/batches", content=payload,
                             headers={"content-type": "application/json"})
        finally:
            self.attempts = attempts
        return self.info(data)

    @staticmethod
    def info(data: dict) -> BatchInfo:
        counts = data.get("request_counts") or {}
        return BatchInfo(id=data["id"], status=data["processing_status"], created_at=_epoch(data.get("created_at")),
                         total=sum(int(v or 0) for v in counts.values()), raw=data)

    def find(self, tag: str, since: float, count: int, custom_ids: set[str],
             known_ids: set[str] = frozenset()) -> BatchInfo | None:
        for info in self.list(since):
            if info.id in known_ids or info.total != count:
                continue
            if not info.ended:
                return info  # same size, created after our intent: ours (checked again on collection)
            first = next(self.results(info), None)
            if first is not None and first.custom_id in custom_ids:
                return info
        return None

    def results(self, info: BatchInfo) -> Iterator[BatchLine]:
        url = info.raw.get("results_url") or f"/messages/batches/{info.id}/results"
        for line in jsonl(self.http("GET", url).content):
            yield self._line(line)

    @staticmethod
    def _line(line: dict) -> BatchLine:
        custom_id = str(line.get("custom_id"))
        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            return BatchLine(custom_id, body=result["message"], http_status=200)
        if kind == "errored":
            err = (result.get("error") or {}).get("error") or {}
            return BatchLine(custom_id, error_kind=_ERROR_TYPES.get(err.get("type"), ErrorKind.API),
                             message=f"in batch: {err.get('type') or 'error'}: {err.get('message') or 'no message'}")
        if kind == "expired":
            return BatchLine(custom_id, error_kind=ErrorKind.TIMEOUT,
                             message="in batch: expired before this request was processed (24 h window)")
        return BatchLine(custom_id, error_kind=ErrorKind.API,
                         message=f"in batch: request {kind or 'not answered'} before it was processed")
