"""OpenAI-compatible chat completions: OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM proxy, the simulator."""
from __future__ import annotations

import json
from typing import Any

from ..errors import ErrorKind, ModelError
from ..model_io import ModelInput
from .base import Provider, ProviderResult

__all__ = ["OpenAIProvider"]


class OpenAIProvider(Provider):
    name = "openai"

    def endpoint_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def build_body(self, inp: ModelInput) -> dict:
        messages = []
        if inp.system_message:
            messages.append({"role": "system", "content": inp.system_message})
        messages.append({"role": "user", "content": inp.prompt})
        body: dict[str, Any] = {
            "model": self.config.model_version,
            "messages": messages,
            "temperature": inp.temperature,
            "max_tokens": inp.max_tokens,
            "logprobs": True,  # confidence = exp(mean token logprob); servers without it just omit them
        }
        if inp.stop:
            body["stop"] = list(inp.stop)
        fmt = inp.response_format
        if fmt.type == "json":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "extract", "schema": fmt.json_schema},
            }
        elif fmt.type == "labels":
            body["top_logprobs"] = 1
        if inp.stream or self.config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def decode(self, content: bytes, content_type: str) -> Any:
        if "text/event-stream" in content_type or content.startswith(b"data:"):
            return _assemble_stream(content, self.model_name)
        return super().decode(content, content_type)

    def parse_body(self, data: dict, status: int) -> ProviderResult:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        logprob_items = ((choice.get("logprobs") or {}).get("content")) or []
        token_logprobs = [float(item["logprob"]) for item in logprob_items if item.get("logprob") is not None]
        return ProviderResult(
            text=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            token_logprobs=token_logprobs or None,
            first_token_logprob=token_logprobs[0] if token_logprobs else None,
            http_status=status,
            raw=data,
        )


def _assemble_stream(content: bytes, model_name: str) -> dict:
    """Read a server-sent-event stream to the end and rebuild one chat.completion object."""
    parts: list[str] = []
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
            logprobs.extend(((choice.get("logprobs") or {}).get("content")) or [])
            finish_reason = choice.get("finish_reason") or finish_reason
    return {
        "choices": [{"message": {"content": "".join(parts)}, "finish_reason": finish_reason,
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": usage,
    }
