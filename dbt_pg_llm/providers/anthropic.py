"""Anthropic Messages API (``POST {api_url}/messages``)."""
from __future__ import annotations

from typing import Any

from ..model_io import ModelInput
from .base import Provider, ProviderResult

__all__ = ["AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter"}


class AnthropicProvider(Provider):
    name = "anthropic"

    def endpoint_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/messages"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def build_body(self, inp: ModelInput) -> dict:
        body: dict[str, Any] = {
            "model": self.config.model_version,
            "max_tokens": inp.max_tokens,
            "temperature": inp.temperature,
            "messages": [{"role": "user", "content": inp.prompt}],
        }
        if inp.system_message:
            body["system"] = inp.system_message
        if inp.stop:
            body["stop_sequences"] = list(inp.stop)
        return body

    def parse_body(self, data: dict, status: int) -> ProviderResult:
        text = "".join(block.get("text", "") for block in data["content"] if block.get("type") == "text")
        usage = data.get("usage") or {}
        stop_reason = data.get("stop_reason")
        return ProviderResult(
            text=text,
            finish_reason=_FINISH.get(stop_reason, stop_reason),
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            http_status=status,
            raw=data,
        )
