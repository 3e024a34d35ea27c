"""OpenAI-compatible chat completions: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM, the simulator.

Structured output (see features.py): ``json_schema`` with ``strict: true`` only when the schema
meets OpenAI's strict rules (else ``strict: false``), ``json_object``, or ``prompt`` (the system
message carries the schema; the answer is validated the same way). Labels are sent as an enum
schema whenever the method is ``json_schema`` (``auto`` starts there): servers with grammar-constrained
output (OpenAI, llama.cpp, vLLM) then answer with one of the labels, where a small local model asked
in plain text answered in sentences. A server that rejects it (a 400 naming the parameter) is asked
without it from then on (features.py), in plain text with ``top_logprobs``. The confidence is the
probability of the tokens that spell the chosen label (``label_logprob``).
Local servers may omit ``logprobs`` and ``usage``: no confidence, and 0 tokens (logged once).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import quote

from ...errors import ErrorKind, ModelError
from ...urls import endpoint
from ..model_io import ModelInput
from ..tokens import output_tokens_bound
from .base import Provider, ProviderResult
from .features import strict_schema_ok
from .structured import answer_text, structured_schema

__all__ = ["OpenAIProvider", "AzureOpenAIProvider", "label_logprob"]


class OpenAIProvider(Provider):
    name = "openai"
    family = "openai"

    def endpoint_url(self, base_url: str) -> str:
        return endpoint(base_url, "/chat/completions")  # a query in api_url stays after the path

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def build_body(self, inp: ModelInput) -> tuple[dict, dict]:
        messages = []
        if inp.system_message:
            messages.append({"role": "system", "content": inp.system_message})
        messages.append({"role": "user", "content": inp.prompt})
        body: dict[str, Any] = {
            "model": self.config.model_version,
            "messages": messages,
            "temperature": inp.temperature,
            # a label answer: at most its longest label + a margin (tokens.py), what the cap reserves
            "max_tokens": output_tokens_bound(self.config, inp),
        }
        method = self.features.structured_method
        structured = None
        if method == "json_schema":  # labels too: a grammar keeps a small model to one of them (module doc)
            structured = structured_schema(inp.response_format, labels_as_enum=True)
        used: dict[str, Any] = {"schema": structured}
        if inp.stop:
            body["stop"] = list(inp.stop)
        if structured is not None:
            strict = strict_schema_ok(structured.schema)
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": structured.schema, "strict": strict}}
            used["structured"] = method
        elif inp.response_format.type == "json" and method == "json_object":
            body["response_format"] = {"type": "json_object"}
            used["structured"] = method
        if self.features.send_logprobs(inp.wants_logprobs):
            body["logprobs"] = True  # confidence = exp(mean token logprob)
            if inp.response_format.type == "labels":
                body["top_logprobs"] = 1  # never without logprobs: servers reject that
            used["logprobs"] = True
        if inp.stream or self.config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body, used

    def decode(self, content: bytes, content_type: str) -> Any:
        if "text/event-stream" in content_type or content.startswith(b"data:"):
            return _assemble_stream(content, self.model_name)
        return super().decode(content, content_type)

    def parse_body(self, data: dict, status: int, used: dict) -> ProviderResult:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage")
        logprob_items = ((choice.get("logprobs") or {}).get("content")) or []
        token_logprobs = [float(item["logprob"]) for item in logprob_items if item.get("logprob") is not None]
        structured = used.get("schema")
        raw_text = message.get("content")
        text = answer_text(structured, raw_text) if raw_text is not None else None
        first = token_logprobs[0] if token_logprobs else None
        if structured is not None and structured.is_label and raw_text:
            labels = structured.schema["properties"]["label"].get("enum") or ()
            aligned = label_logprob(logprob_items, text, labels)
            first = aligned if aligned is not None else first  # a server that ignored the schema: plain text
        return ProviderResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int((usage or {}).get("prompt_tokens") or 0),
            completion_tokens=int((usage or {}).get("completion_tokens") or 0),
            # part of prompt_tokens (OpenAI's automatic prefix cache; vLLM / LiteLLM report it too)
            cached_tokens=int(((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            token_logprobs=token_logprobs or None,
            first_token_logprob=first,
            http_status=status,
            refusal=message.get("refusal") or None,
            usage_reported=bool(usage),
            raw=data,
        )


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI: ``{api_url}/openai/deployments/{deployment}/chat/completions?api-version=...``
    with an ``api-key`` header; the body is OpenAI's."""

    name = "azure"

    def endpoint_url(self, base_url: str) -> str:
        deployment = quote(self.config.deployment or self.config.model_version or "", safe="")
        return endpoint(base_url, f"/openai/deployments/{deployment}/chat/completions",
                        {"api-version": self.config.api_version or ""})

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["api-key"] = self.config.api_key
        return headers


def label_logprob(items: list[dict], label: str | None, labels=()) -> float | None:
    """The logprob of ``label`` inside an enum answer ``{"label": "<label>"}``, found by aligning
    the label against the logprob tokens themselves: the sum over the tokens that spell it up to
    the character where it differs from every other of ``labels`` (the choice is made there; a
    grammar forces the rest, so "very good" vs "very bad" counts "very" and the next token).

    The tokens are not the content's: llama.cpp's server strips a code fence (```json ... ```)
    from ``content`` but not from the logprobs, so offsets into ``content`` picked the wrong token
    (a fence token's 0.0157 stored where the label had 0.345); the first token of the JSON, ``{``,
    says nothing about the choice either. None when the label is not spelled in the tokens (no
    confidence rather than a wrong one)."""
    if not items or not label:
        return None
    texts = [_token_text(item) for item in items]
    stream = "".join(texts)
    quoted = json.dumps(label, ensure_ascii=False)[1:-1]  # as the JSON spells it (escapes), no quotes
    found = re.search(r'"label"\s*:\s*"' + re.escape(quoted) + '"', stream)
    if found is not None:
        start = found.end() - len(quoted) - 1
    else:  # a server that ignored the schema answered the label as text ("Positive."): spelled as is
        bare = re.search(r"(?<!\w)" + re.escape(label) + r"(?!\w)", stream, re.IGNORECASE)
        if bare is None:
            return None
        start, quoted = bare.start(), bare.group(0)
    shared = max((len(os.path.commonprefix([label.lower(), other.lower()])) for other in labels
                  if other != label), default=0)
    end = start + min(len(quoted), shared + 1)  # through the first character no other label has there
    total, pos, used = 0.0, 0, 0
    for text, item in zip(texts, items):
        if pos < end and pos + len(text) > start:  # the token covers part of the label
            if item.get("logprob") is None:
                return None
            total += float(item["logprob"])
            used += 1
        pos += len(text)
    return total if used else None


def _token_text(item: dict) -> str:
    token = item.get("token")
    if token is None and item.get("bytes") is not None:
        token = bytes(item["bytes"]).decode("utf-8", "replace")
    return token or ""


def _assemble_stream(content: bytes, model_name: str) -> dict:
    """Read a server-sent-event stream to the end and rebuild one chat.completion object."""
    parts: list[str] = []
    refusal: list[str] = []
    logprobs: list[dict] = []
    finish_reason = None
    usage: dict = {}
    for line in content.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ModelError(ErrorKind.API, "malformed event in the answer stream", model=model_name) from None
        if chunk.get("error"):
            return chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
            if delta.get("refusal"):
                refusal.append(delta["refusal"])
            logprobs.extend(((choice.get("logprobs") or {}).get("content")) or [])
            finish_reason = choice.get("finish_reason") or finish_reason
    message = {"content": "".join(parts) if parts or not refusal else None, "refusal": "".join(refusal) or None}
    return {
        "choices": [{"message": message, "finish_reason": finish_reason,
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": usage or None,
    }
