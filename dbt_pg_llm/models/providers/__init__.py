"""One provider per wire protocol. ``provider_for(config, name)`` picks by ``config.provider``."""
from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import Provider, ProviderResult
from .openai import AzureOpenAIProvider, OpenAIProvider
from .rate_limits import RateLimitState, parse_duration, rate_limit_state
from .rate_limits import retry_after_seconds as parse_retry_after

__all__ = ["Provider", "ProviderResult", "OpenAIProvider", "AzureOpenAIProvider", "AnthropicProvider",
           "provider_for", "parse_retry_after", "parse_duration", "rate_limit_state", "RateLimitState"]

PROVIDER_CLASSES = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "azure": AzureOpenAIProvider}


def provider_for(config, model_name: str, transport=None) -> Provider:
    return PROVIDER_CLASSES[config.provider](config, model_name, transport=transport)
