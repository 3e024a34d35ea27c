"""OpenAI Batch API: upload a JSONL file (``POST /files``, purpose ``batch``), create a batch on it
(``POST /batches``), poll (``GET /batches/{id}``), download the output and error files
(``GET /files/{id}/content``). Limits: 50,000 requests and 200 MB per input file.

Our idempotency id travels in the batch's ``metadata`` (``pg_llm_batch``), so a run that died
between creating a batch and recording its id finds it again by listing batches.
"""
from __future__ import annotations

import json
from typing import Iterator

import httpx

from ...errors import ErrorKind
from ..providers.base import classify_http_error
from .client import BatchClient, BatchInfo, BatchLine, jsonl

__all__ = ["OpenAIBatchClient", "TAG_KEY"]

TAG_KEY = "pg_llm_batch"
_ERROR_CODES = {"batch_expired": ErrorKind.TIMEOUT, "batch_cancelled": ErrorKind.API}


class OpenAIBatchClient(BatchClient):
    provider = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024
    batches_path = "/batches"
    cursor_param = "after"
    endpoint_url = "/v1/chat/completions"  # a batch has one endpoint; "/v1/embeddings" for embeddings

    def __init__(self, *args, endpoint_url: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if endpoint_url:
            self.endpoint_url = endpoint_url

    def encode(self, custom_id: str, body: dict) -> bytes:
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint_url, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def submit(self, tag: str, chunk: list[tuple[str, dict, bytes]]) -> BatchInfo:
        data = b"".join(encoded for _, _, encoded in chunk)
        uploaded = self.json("POST", "/files", data={"purpose": "batch"},
                             files={"file": (f"pg_llm_{tag}.jsonl", data, "application/jsonl")})
        created = self._create_once({"input_file_id": uploaded["id"], "endpoint": self.endpoint_url,
                                     "completion_window": "24h", "metadata": {TAG_KEY: tag}})
        return self.info(created)

    def _create_once(self, payload: dict) -> dict:
        """Creating is NOT retried: a lost answer would make a second, paid batch. The caller finds
        a batch whose creation it could not confirm with ``find``."""
        attempts, self.attempts = self.attempts, 1
        try:
            return self.json("POST", "/batches", json=payload)
        finally:
            self.attempts = attempts

    @staticmethod
    def info(data: dict) -> BatchInfo:
        counts = data.get("request_counts") or {}
        return BatchInfo(id=data["id"], status=data["status"], created_at=float(data.get("created_at") or 0),
                         total=int(counts.get("total") or 0), tag=(data.get("metadata") or {}).get(TAG_KEY), raw=data)

    def find(self, tag: str, since: float, count: int, custom_ids: set[str],
             known_ids: set[str] = frozenset()) -> BatchInfo | None:
        return next((info for info in self.list(since) if info.tag == tag), None)

    def results(self, info: BatchInfo) -> Iterator[BatchLine]:
        for file_id in (info.raw.get("output_file_id"), info.raw.get("error_file_id")):
            if not file_id:
                continue
            for line in jsonl(self.http("GET", f"/files/{file_id}/content").content):
                yield self._line(line)

    def _line(self, line: dict) -> BatchLine:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        status = response.get("status_code")
        if status == 200 and isinstance(response.get("body"), dict):
            return BatchLine(custom_id, body=response["body"], http_status=200)
        if status:
            error = classify_http_error(int(status), json.dumps(response.get("body") or {}).encode(),
                                        httpx.Headers(), self.model_name)
            return BatchLine(custom_id, error_kind=error.kind, message=f"in batch: {error.message}", http_status=status)
        err = line.get("error") or {}
        code = str(err.get("code") or "")
        return BatchLine(custom_id, error_kind=_ERROR_CODES.get(code, ErrorKind.API),
                         message=f"in batch: {code or 'error'}: {err.get('message') or 'no message'}")
