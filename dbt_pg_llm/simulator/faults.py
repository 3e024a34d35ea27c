"""Fault injection and rate limits of the simulator.

Random faults: ``--fault KIND=RATE``; each request makes one draw from the server's
``random.Random(seed)`` and the rates are stacked (so with rates summing to <= 1 each kind happens
with exactly its rate). Scripted faults: a last user message containing ``[[fault:KIND]]`` always
gets KIND; ``[[fault:KIND*N]]`` gets KIND on its first N requests (counted per distinct prompt text),
then is answered normally (and never gets a random fault).

RPM / TPM: token buckets (capacity = the per-minute limit, refilled continuously at limit/60 per
second). TPM charges prompt + completion tokens of the request.
"""
from __future__ import annotations

import math
import random
import re
import time
from datetime import datetime, timedelta, timezone

__all__ = ["FAULT_KINDS", "RATE_LIMIT_HEADER_MODES", "parse_fault_arg", "check_faults", "FaultPicker", "RateLimiter",
           "rate_limit_headers", "go_duration"]

FAULT_KINDS = (
    "429", "500", "503", "529", "reset", "malformed", "truncated", "stall",
    "error_body", "insufficient_quota", "length", "content_filter", "400",
    "refusal", "overloaded", "context_length",
)
RATE_LIMIT_HEADER_MODES = ("retry-after", "x-ratelimit", "none")

_SCRIPT_RE = re.compile(r"\[\[fault:([A-Za-z0-9_]+)(?:\*(\d+))?\]\]")


def parse_fault_arg(text: str) -> tuple[str, float]:
    """``"429=0.1"`` -> ("429", 0.1); raises ValueError naming the problem."""
    kind, sep, rate = text.partition("=")
    kind = kind.strip()
    if not sep:
        raise ValueError(f"--fault {text!r}: expected KIND=RATE, e.g. 429=0.05")
    if kind not in FAULT_KINDS:
        raise ValueError(f"--fault {text!r}: unknown kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"--fault {text!r}: RATE must be a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--fault {text!r}: RATE must be between 0 and 1")
    return kind, value


def check_faults(faults: dict) -> dict[str, float]:
    out = {}
    for kind, rate in (faults or {}).items():
        kind, rate = parse_fault_arg(f"{kind}={rate}")
        out[kind] = rate
    return out


class FaultPicker:
    """Decides the fault (or None) of each request."""

    def __init__(self, faults: dict[str, float] | None, seed: int | None):
        self.seed = seed
        self.set_faults(faults)
        self.reset()

    def set_faults(self, faults: dict[str, float] | None) -> None:
        self.faults = [(k, float(v)) for k, v in check_faults(faults or {}).items() if float(v) > 0]

    def reset(self) -> None:
        self.rng = random.Random(self.seed)
        self.scripted: dict[str, int] = {}

    def pick(self, user: str) -> str | None:
        if "[[fault:" in user:
            m = _SCRIPT_RE.search(user)
            if m and m.group(1) in FAULT_KINDS:
                if m.group(2) is None:
                    return m.group(1)
                seen = self.scripted.get(user, 0)
                self.scripted[user] = seen + 1
                return m.group(1) if seen < int(m.group(2)) else None
        if not self.faults:
            return None
        r = self.rng.random()
        acc = 0.0
        for kind, rate in self.faults:
            acc += rate
            if r < acc:
                return kind
        return None


class _Bucket:
    __slots__ = ("capacity", "rate", "level", "stamp")

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if now). A request bigger than the bucket
        passes when the bucket is full, so it cannot be refused forever."""
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate


class RateLimiter:
    """RPM and TPM token buckets; ``admit(tokens)`` returns 0 (admitted, charged) or seconds to wait."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.rpm = _Bucket(rpm) if rpm else None
        self.tpm = _Bucket(tpm) if tpm else None

    @property
    def active(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def admit(self, tokens: int) -> tuple[float, str]:
        """(0.0, "") when admitted; else (seconds to wait, "requests" or "tokens")."""
        now = time.monotonic()
        wait, which = 0.0, ""
        if self.rpm is not None:
            self.rpm.refill(now)
            wait, which = self.rpm.wait_for(1), "requests"
        if self.tpm is not None:
            self.tpm.refill(now)
            w = self.tpm.wait_for(tokens)
            if w > wait:
                wait, which = w, "tokens"
        if wait > 0:
            return wait, which
        if self.rpm is not None:
            self.rpm.level -= 1
        if self.tpm is not None:
            self.tpm.level -= tokens
        return 0.0, ""

    def bucket(self, which: str) -> "_Bucket | None":
        return self.rpm if which == "requests" else self.tpm

    def state_headers(self, anthropic: bool) -> dict[str, str]:
        """What a real provider sends on every answer: limit, remaining and reset of each bucket."""
        headers: dict[str, str] = {}
        for which in ("requests", "tokens"):
            b = self.bucket(which)
            if b is not None:
                b.refill(time.monotonic())
                headers.update(rate_limit_headers("x-ratelimit", anthropic, (b.capacity - b.level) / b.rate, which,
                                                  b.capacity, b.level))
        return headers


def go_duration(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` format: ``300ms``, ``1s``, ``3.2s``, ``1m30s``, ``6m0s`` (rounded up
    to the millisecond, so a client that waits exactly this long is not early)."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _rfc3339_after(seconds: float) -> str:
    """Anthropic's ``anthropic-ratelimit-*-reset``: an RFC 3339 time, whole seconds, rounded up."""
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_limit_headers(mode: str, anthropic: bool, wait_s: float, which: str = "requests",
                       limit: float | None = None, remaining: float = 0) -> dict[str, str]:
    """How a 429 says when to come back.

    ``retry-after``: ``Retry-After`` (whole seconds, >= 1) and ``retry-after-ms``.
    ``x-ratelimit``: OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests|tokens}`` (reset as a duration
    such as ``1s``), Anthropic ``anthropic-ratelimit-{requests|tokens}-{limit,remaining,reset}`` (reset as
    an RFC 3339 time); no Retry-After, so a client must read these.
    ``none``: nothing (OpenAI's message still says "Please try again in Xs")."""
    if mode == "none":
        return {}
    if mode == "retry-after":
        return {"Retry-After": str(max(1, math.ceil(wait_s))), "retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))}
    headers: dict[str, str] = {}
    if anthropic:
        prefix = f"anthropic-ratelimit-{which}"
        headers[f"{prefix}-reset"] = _rfc3339_after(wait_s)
    else:
        prefix = "x-ratelimit"
        headers[f"{prefix}-reset-{which}"] = go_duration(wait_s)
    if limit is not None:
        headers[f"{prefix}-limit{'' if anthropic else '-' + which}"] = str(int(limit))
    headers[f"{prefix}-remaining{'' if anthropic else '-' + which}"] = str(max(0, int(remaining)))
    return headers
