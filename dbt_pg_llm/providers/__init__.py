"""One provider per wire protocol. ``provider_for(config, name)`` picks by ``config.provider``."""
from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import Provider, ProviderResult, parse_retry_after
from .openai import OpenAIProvider

__all__ = ["Provider", "ProviderResult", "OpenAIProvider", "AnthropicProvider", "provider_for", "parse_retry_after"]

PROVIDER_CLASSES = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}


def provider_for(config, model_name: str, transport=None) -> Provider:
    return PROVIDER_CLASSES[config.provider](config, model_name, transport=transport)
