"""Anthropic Messages API (``POST {api_url}/messages``).

Structured output (JSON schemas) is a forced tool call: one tool whose ``input_schema`` is the
schema, ``tool_choice: {type: tool}``, and the answer is the ``tool_use`` block's ``input``
(``structured_output: prompt`` leaves it to the system message). ``stream: true`` is sent when asked
and the server-sent events (``event:`` + ``data:`` lines) are read to the end; an ``error`` event
mid-stream becomes a ModelError carrying the provider's message. ``stop_reason: "refusal"`` is a
refusal (ErrorKind.REFUSED). Anthropic has no logprobs: its answers carry no confidence.

Prompt caching (decision 0028): a system prompt long enough to be cached is sent as one text block
marked ``cache_control: {type: ephemeral}``; ``usage.input_tokens`` excludes the cache reads and
writes, so ``prompt_tokens`` is the sum of the three.
"""
from __future__ import annotations

import json
from typing import Any

from ...errors import ErrorKind, ModelError
from ...urls import endpoint
from ..model_io import ModelInput
from ..pricing import cache_control_min_tokens
from ..tokens import output_tokens_bound
from .base import Provider, ProviderResult
from .structured import TOOL_NAME, answer_text, structured_schema

__all__ = ["AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "stop"}
# error types of Anthropic's error events / bodies -> (kind, recoverable)
_STREAM_ERRORS = {"overloaded_error": (ErrorKind.API, True), "api_error": (ErrorKind.API, True),
                  "rate_limit_error": (ErrorKind.RATE_LIMITED, True),
                  "invalid_request_error": (ErrorKind.INVALID_INPUT, False)}


class AnthropicProvider(Provider):
    name = "anthropic"
    family = "anthropic"

    def endpoint_url(self, base_url: str) -> str:
        return endpoint(base_url, "/messages")  # a query in api_url stays after the path

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def build_body(self, inp: ModelInput) -> tuple[dict, dict]:
        body: dict[str, Any] = {
            "model": self.config.model_version,
            # a label answer: at most its longest label + a margin (tokens.py), what the cap reserves
            "max_tokens": output_tokens_bound(self.config, inp),
            "temperature": inp.temperature,
            "messages": [{"role": "user", "content": inp.prompt}],
        }
        if inp.system_message:
            body["system"] = inp.system_message
        if inp.stop:
            body["stop_sequences"] = list(inp.stop)
        method = self.features.structured_method
        structured = None
        if method == "tool":
            structured = structured_schema(inp.response_format, labels_as_enum=self.config.structured_output != "auto")
        if structured is not None:
            body["tools"] = [{"name": TOOL_NAME, "description": "Record the answer.",
                              "input_schema": structured.schema}]
            body["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        self._mark_cacheable_prefix(body)
        if inp.stream or self.config.stream:
            body["stream"] = True
        return body, {"structured": method if structured is not None else None, "schema": structured}

    def _mark_cacheable_prefix(self, body: dict) -> None:
        """Anthropic caches only up to an explicit ``cache_control`` breakpoint. The static part of a
        request (tools, then the system prompt: instructions, labels, schema) comes before the row,
        so one breakpoint at its end lets every row of a column read it from the cache. Marked only
        when it can be cached (``pricing.cache_control_min_tokens``; estimated as characters / 4,
        which undercounts rather than marks a prefix Anthropic would not cache)."""
        system, tools = body.get("system"), body.get("tools")
        if not system:  # a schema alone is rarely long enough; the system prompt is the shared part
            return
        static_chars = len(system) + (len(json.dumps(tools, ensure_ascii=False)) if tools else 0)
        if static_chars // 4 >= cache_control_min_tokens(self.config):
            body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]

    def decode(self, content: bytes, content_type: str) -> Any:
        if "text/event-stream" in content_type or content.startswith((b"event:", b"data:")):
            return _assemble_stream(content, self.model_name)
        return super().decode(content, content_type)

    def parse_body(self, data: dict, status: int, used: dict) -> ProviderResult:
        blocks = data["content"]
        text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
        tool_inputs = [block.get("input") for block in blocks if block.get("type") == "tool_use"]
        structured = used.get("schema")
        if structured is not None and tool_inputs:
            text = answer_text(structured, tool_inputs[0])
        usage = data.get("usage")
        stop_reason = data.get("stop_reason")
        refusal = None
        if stop_reason == "refusal":
            refusal = text.strip() or "the model declined to answer (stop_reason: refusal)"
        usage = usage or {}
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        return ProviderResult(
            text=text,
            finish_reason=_FINISH.get(stop_reason, stop_reason),
            # Anthropic's input_tokens excludes cache reads and writes: the prompt is all three
            prompt_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
            completion_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
            http_status=status,
            refusal=refusal,
            usage_reported=bool(usage),
            raw=data,
        )


def _assemble_stream(content: bytes, model_name: str) -> dict:
    """Rebuild one Messages API answer from its event stream (message_start, content_block_start /
    _delta / _stop, message_delta with the stop reason and output usage, message_stop)."""
    message: dict[str, Any] = {"content": [], "usage": {}}
    partial_json: dict[int, list[str]] = {}
    for event in _events(content, model_name):
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            err_type = str(error.get("type") or "error")
            err_kind, recoverable = _STREAM_ERRORS.get(err_type, (ErrorKind.API, True))
            raise ModelError(err_kind, f"error event in the answer stream ({err_type}: "
                             f"{str(error.get('message') or 'no message')[:300]})", recoverable=recoverable,
                             model=model_name)
        if kind == "message_start":
            start = event.get("message") or {}
            message.update({k: v for k, v in start.items() if k not in ("content", "usage")})
            message["usage"].update(start.get("usage") or {})
        elif kind == "content_block_start":
            message["content"].append(dict(event.get("content_block") or {}))
        elif kind == "content_block_delta":
            index = int(event.get("index", len(message["content"]) - 1))
            while len(message["content"]) <= index:
                message["content"].append({"type": "text", "text": ""})
            block, delta = message["content"][index], event.get("delta") or {}
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif delta.get("type") == "input_json_delta":
                partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            # cumulative counts; a null (e.g. cache_read_input_tokens) must not erase message_start's
            message["usage"].update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
    for index, parts in partial_json.items():
        try:
            message["content"][index]["input"] = json.loads("".join(parts) or "{}")
        except ValueError:
            message["content"][index]["input"] = "".join(parts)  # validation reports it
    if not message["usage"]:
        message["usage"] = None
    return message


def _events(content: bytes, model_name: str):
    """The JSON payloads of a server-sent-event stream (``event:`` lines are implied by ``type``)."""
    for line in content.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            yield json.loads(payload)
        except ValueError:
            raise ModelError(ErrorKind.API, "malformed event in the answer stream", model=model_name) from None
