"""What a request costs, provider prompt caching included (decision 0028).

Providers bill the input tokens they read from their prompt cache at a discount (OpenAI's
``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``) and Anthropic bills
the tokens it writes to the cache at a premium (``cache_creation_input_tokens``). A model's prices:

* ``cost_per_1k_input_tokens`` / ``cost_per_1k_output_tokens``: the list prices;
* ``cost_per_1k_cached_input_tokens``: unset = the input price (conservative: a cost is never
  under-reported because a discount was assumed);
* ``cost_per_1k_cache_write_tokens``: unset = 1.25 x the input price (Anthropic's documented price of
  a 5-minute cache write; OpenAI never writes, so it does not matter there).

``TokenUsage.prompt`` counts every input token; ``cached`` and ``cache_write`` are parts of it.
Prices are read with ``getattr`` so that any object with the two list prices (a strategy's member
config) can be priced.
"""
from __future__ import annotations

from typing import Any

from .model_io import TokenUsage

__all__ = ["CACHE_WRITE_MULTIPLIER", "cached_input_price", "cache_write_price", "input_price_bound", "cost_usd",
           "prompt_cache_saving_usd", "cache_control_min_tokens"]

CACHE_WRITE_MULTIPLIER = 1.25  # Anthropic: a 5-minute cache write costs 1.25x the base input price

# Anthropic's documented minimum cacheable prefix, by model family (a shorter prefix marked with
# cache_control is simply not cached, and not charged as a write). First match wins; else 1024.
_ANTHROPIC_MIN_CACHEABLE = (("opus-4-6", 4096), ("opus-4-5", 4096), ("haiku-4-5", 4096), ("sonnet-4-6", 2048),
                            ("haiku", 2048))
DEFAULT_MIN_CACHEABLE = 1024


def _price(config: Any, name: str) -> float:
    return float(getattr(config, name, 0.0) or 0.0)


def cached_input_price(config: Any) -> float:
    """USD per 1k input tokens read from the provider's prompt cache."""
    value = getattr(config, "cost_per_1k_cached_input_tokens", None)
    return _price(config, "cost_per_1k_input_tokens") if value is None else float(value)


def cache_write_price(config: Any) -> float:
    """USD per 1k input tokens written to the provider's prompt cache (Anthropic)."""
    value = getattr(config, "cost_per_1k_cache_write_tokens", None)
    return CACHE_WRITE_MULTIPLIER * _price(config, "cost_per_1k_input_tokens") if value is None else float(value)


def input_price_bound(config: Any) -> float:
    """The highest price any input token of a request can be billed at: what a worst-case estimate
    must use. Only Anthropic writes to its cache (when a request marks a ``cache_control``
    breakpoint), so only there (or with an explicit write price) can a token cost more than input."""
    prices = [_price(config, "cost_per_1k_input_tokens"), cached_input_price(config)]
    if getattr(config, "provider", None) == "anthropic" or getattr(config, "cost_per_1k_cache_write_tokens", None):
        prices.append(cache_write_price(config))
    return max(prices)


def cost_usd(config: Any, tokens: TokenUsage) -> float:
    """The cost of ``tokens`` at ``config``'s prices."""
    return (tokens.uncached * _price(config, "cost_per_1k_input_tokens")
            + tokens.cached * cached_input_price(config)
            + tokens.cache_write * cache_write_price(config)
            + tokens.completion * _price(config, "cost_per_1k_output_tokens")) / 1000.0


def prompt_cache_saving_usd(config: Any, tokens: TokenUsage) -> float:
    """What the provider's prompt cache saved on ``tokens``: their cost had every input token been
    billed at the input price, minus their real cost (negative when cache writes cost more than the
    reads saved, e.g. a prefix written once and never read again)."""
    if not tokens.cached and not tokens.cache_write:
        return 0.0
    return cost_usd(config, TokenUsage(tokens.prompt, tokens.completion)) - cost_usd(config, tokens)


def cache_control_min_tokens(config: Any) -> int:
    """The prefix length (tokens) from which Anthropic requests mark their shared prefix with
    ``cache_control``: ``cache_control_min_tokens`` when set, else Anthropic's documented minimum for
    the model family (4096 for Opus 4.5+ / Haiku 4.5, 2048 for Sonnet 4.6 and Haiku 3.x, else 1024)."""
    value = getattr(config, "cache_control_min_tokens", None)
    if value is not None:
        return int(value)
    version = (getattr(config, "model_version", None) or "").lower().replace(".", "-")
    for family, tokens in _ANTHROPIC_MIN_CACHEABLE:
        if family in version:
            return tokens
    return DEFAULT_MIN_CACHEABLE
