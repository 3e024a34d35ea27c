"""What a provider's headers and error text say about its rate limits: when to come back, what is left.

Providers say "wait" in many dialects; ``retry_after_seconds`` reads them all, most precise first:

* ``retry-after-ms`` (OpenAI, milliseconds), ``Retry-After`` (seconds or an HTTP date),
  ``llm_provider-retry-after`` (a LiteLLM proxy forwarding its backend's Retry-After);
* the error message, OpenAI style: "Please try again in 3.2s" / "in 450ms" / "in 1m30s";
* the reset headers of the exhausted budget: ``x-ratelimit-reset-requests`` / ``-tokens``
  (OpenAI, Go durations such as ``3s``, ``1m30s``, ``300ms``, ``6m0s``) and Anthropic's
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`` (RFC 3339 times).

``rate_limit_state`` reads the *remaining* budget headers of any answer (200s too), so the request
pool can hold new requests once a budget is spent instead of waiting for the 429s.
"""
from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping

__all__ = ["RateLimitState", "parse_duration", "retry_after_seconds", "rate_limit_state"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?|\.\d+)(?:ns|us|µs|ms|h|m|s)"
                        r"(?:(?:\d+(?:\.\d+)?)(?:ns|us|µs|ms|h|m|s))*)", re.IGNORECASE)
# (dimension, remaining header, reset header, reset format) per provider dialect
_BUDGETS = (
    ("requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "duration"),
    ("tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "duration"),
    ("requests", "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", "time"),
    ("tokens", "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", "time"),
    ("tokens", "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset", "time"),
    ("tokens", "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset", "time"),
)


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``3s``, ``1m30s``, ``300ms``, ``6m0s``, ``1h2m``), or a bare
    number of seconds; None when it is not one."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _seconds_until(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (epoch) to an RFC 3339 time (Anthropic) or an HTTP date (Retry-After)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _reset_seconds(value: str | None, form: str, now: float) -> float | None:
    return parse_duration(value) if form == "duration" else _seconds_until(value, now)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None and value.strip() != "" else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimitState:
    """The budgets an answer's headers report: what is left and seconds until each is refilled."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    requests_reset_s: float | None = None
    tokens_reset_s: float | None = None

    @property
    def exhausted_for_s(self) -> float | None:
        """Seconds to hold new requests because a budget is at 0 (the longest such reset), else None."""
        waits = [reset for left, reset in ((self.remaining_requests, self.requests_reset_s),
                                           (self.remaining_tokens, self.tokens_reset_s))
                 if left is not None and left <= 0 and reset is not None]
        return max(waits) if waits else None


def rate_limit_state(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> RateLimitState | None:
    """The remaining budgets and their resets from any answer's headers; None when it sent none.
    Several token budgets (Anthropic input/output): the smallest remaining and the longest reset."""
    if not any(name.lower().startswith(("x-ratelimit-", "anthropic-ratelimit-")) for name in headers.keys()):
        return None  # most answers of most servers: no lookups, no clock
    found: dict[str, list] = {"requests": [], "tokens": []}
    t = now()
    for dim, remaining_name, reset_name, form in _BUDGETS:
        left = _int_or_none(headers.get(remaining_name))
        reset = _reset_seconds(headers.get(reset_name), form, t)
        if left is not None or reset is not None:
            found[dim].append((left, reset))
    if not found["requests"] and not found["tokens"]:
        return None

    def summary(items):
        lefts = [left for left, _ in items if left is not None]
        resets = [reset for left, reset in items if reset is not None and (left is None or left <= min(lefts))]
        return (min(lefts) if lefts else None), (max(resets) if resets else None)

    req_left, req_reset = summary(found["requests"])
    tok_left, tok_reset = summary(found["tokens"])
    return RateLimitState(req_left, tok_left, req_reset, tok_reset)


def retry_after_seconds(headers: Mapping[str, str], message: str | None = None,
                        now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait before trying again, or None when it did not say."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    for name in ("retry-after", "llm_provider-retry-after"):
        value = headers.get(name)
        if value:
            seconds = parse_duration(value)
            if seconds is None:
                seconds = _seconds_until(value, now())
            if seconds is not None:
                return seconds
    if message:
        match = _TRY_AGAIN.search(message)
        if match:
            return parse_duration(match.group(1))
    state = rate_limit_state(headers, now)
    if state is None:
        return None
    budgets = ((state.remaining_requests, state.requests_reset_s), (state.remaining_tokens, state.tokens_reset_s))
    # The budget that is spent (or that the server did not count for us) is why we were refused;
    # a budget with requests left is not, so its reset is only a last resort.
    blocking = [reset for left, reset in budgets if reset is not None and (left is None or left <= 0)]
    if blocking:
        return max(blocking)
    others = [reset for _, reset in budgets if reset is not None]
    return min(others) if others else None
