"""The providers' prompt caches, as they bill them (decision 0028).

* OpenAI (chat completions, Azure): automatic. A prompt of at least 1024 tokens whose beginning was
  processed recently is partly read from the cache: ``usage.prompt_tokens_details.cached_tokens`` is
  the longest prefix seen before, in 128-token increments from 1024 (``cached_tokens`` is part of
  ``prompt_tokens``). Here a token is 4 characters of the messages' text (the simulator's tokenizer),
  so the prefix is compared in blocks of 512 characters.
* Anthropic: only at explicit ``cache_control`` breakpoints (system blocks here). A breakpoint whose
  prefix (tools + system up to it) is at least the model's minimum (1024 tokens; 2048 for Haiku 3.x /
  Sonnet 4.6; 4096 for Opus 4.5+ / Haiku 4.5) is written on first use (``cache_creation_input_tokens``)
  and read after (``cache_read_input_tokens``); ``input_tokens`` excludes both.

Entries live ``ttl_s`` (5 minutes; an Anthropic breakpoint may ask for ``ttl: "1h"``) from their last
use, per model. Only answered (billed) requests read or fill the cache.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

__all__ = ["PromptCache", "CachePoint", "anthropic_min_tokens", "cache_ttl_s", "OPENAI_MIN_TOKENS", "OPENAI_INCREMENT"]

OPENAI_MIN_TOKENS = 1024
OPENAI_INCREMENT = 128
_CHARS_PER_TOKEN = 4
_TTL = {"5m": 300.0, "1h": 3600.0}
_ANTHROPIC_MIN = (("opus-4-6", 4096), ("opus-4-5", 4096), ("haiku-4-5", 4096), ("sonnet-4-6", 2048), ("haiku", 2048))


def anthropic_min_tokens(model: str) -> int:
    """Anthropic's documented minimum cacheable prompt for ``model`` (1024 unless listed)."""
    name = model.lower().replace(".", "-")
    return next((tokens for family, tokens in _ANTHROPIC_MIN if family in name), 1024)


@dataclass(frozen=True, slots=True)
class CachePoint:
    """An Anthropic ``cache_control`` breakpoint: the digest of everything before it, its tokens, its TTL."""

    digest: bytes
    tokens: int
    ttl_s: float


def cache_ttl_s(ttl: str | None) -> float:
    """Seconds an Anthropic breakpoint's entry lives after its last use (``ttl``: "5m" default, "1h")."""
    return _TTL.get(ttl or "5m", 300.0)


class PromptCache:
    def __init__(self, ttl_s: float = 300.0, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self._until: dict[tuple[str, bytes], float] = {}

    def reset(self) -> None:
        self._until.clear()

    def _hit(self, model: str, digest: bytes, now: float) -> bool:
        until = self._until.get((model, digest))
        return until is not None and until > now

    def _keep(self, model: str, digest: bytes, now: float, ttl_s: float) -> None:
        key = (model, digest)
        self._until[key] = max(self._until.get(key, 0.0), now + ttl_s)
        if len(self._until) > 200_000:  # a long-running simulator: forget what has expired
            self._until = {k: v for k, v in self._until.items() if v > now}

    def openai(self, model: str, contents: list[str], prompt_tokens: int) -> int:
        """The cached tokens of a prompt made of ``contents`` (OpenAI's automatic prefix caching)."""
        if prompt_tokens < OPENAI_MIN_TOKENS:
            return 0
        now = self.clock()
        block = OPENAI_INCREMENT * _CHARS_PER_TOKEN
        text = "\x00".join(contents).encode("utf-8", "surrogatepass")
        h = hashlib.sha256()
        cached, hit = 0, True
        digests = []
        for end in range(block, len(text) + 1, block):
            h.update(text[end - block:end])
            tokens = end // _CHARS_PER_TOKEN
            if tokens < OPENAI_MIN_TOKENS:
                continue
            digest = h.copy().digest()
            digests.append(digest)
            hit = hit and self._hit(model, digest, now)  # the prefix read is the longest seen whole
            if hit:
                cached = tokens
        for digest in digests:
            self._keep(model, digest, now, self.ttl_s)
        return min(cached, prompt_tokens)

    def anthropic(self, model: str, points: list[CachePoint], prompt_tokens: int) -> tuple[int, int]:
        """(cache read, cache write) tokens of a request with these breakpoints: the longest cached
        prefix is read, the rest up to the last cacheable breakpoint is written."""
        minimum = anthropic_min_tokens(model)
        usable = [p for p in points if minimum <= p.tokens <= prompt_tokens]
        if not usable:
            return 0, 0
        now = self.clock()
        read = max((p.tokens for p in usable if self._hit(model, p.digest, now)), default=0)
        last = max(usable, key=lambda p: p.tokens)
        write = last.tokens - read if last.tokens > read else 0
        for p in usable:
            self._keep(model, p.digest, now, p.ttl_s)
        return read, write
