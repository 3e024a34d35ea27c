"""RetryPolicy: the one retry layer of the engine, built on tenacity.

No SDK or transport retries run underneath (the HTTP transport is created with retries=0), so the
numbers here are the whole story: ``max_retries`` extra attempts, exponential backoff with full
jitter, a server's ``Retry-After`` (or any other way it said when to come back, see
providers/rate_limits.py) honoured in full up to ``max_retry_after_s`` even when it exceeds
``max_delay_ms`` (never waiting less than it asked), and an overall deadline across all attempts.
A server asking for more than ``max_retry_after_s`` fails the call at once (kind ``rate_limited``,
the message says how long it asked): waiting minutes per key would stall the whole run.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import tenacity

from ..errors import ErrorKind, ModelError

__all__ = ["RetryPolicy", "DEFAULT_RETRYABLE"]

T = TypeVar("T")

DEFAULT_RETRYABLE = frozenset({ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED, ErrorKind.API})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_delay_ms: int = 500
    backoff_factor: float = 2.0
    max_delay_ms: int = 30_000
    deadline_ms: int | None = 120_000  # across all attempts; None = no overall deadline
    retryable_errors: frozenset = field(default_factory=lambda: DEFAULT_RETRYABLE)
    max_retry_after_s: float = 120.0  # the longest server-requested wait honoured

    FIELDS = ("max_retries", "base_delay_ms", "backoff_factor", "max_delay_ms", "deadline_ms", "retryable_errors",
              "max_retry_after_s")

    @classmethod
    def from_dict(cls, data: dict | "RetryPolicy" | None, path: str = "retry") -> "RetryPolicy":
        from .config import check_keys  # local: config imports this module

        if data is None:
            return cls()
        if isinstance(data, RetryPolicy):
            return data
        if not isinstance(data, dict):
            from ..errors import ConfigError

            raise ConfigError([f"{path}: expected a mapping of retry settings, got {type(data).__name__}"])
        check_keys(data, cls.FIELDS, path)
        kwargs = dict(data)
        if "retryable_errors" in kwargs:
            kwargs["retryable_errors"] = frozenset(ErrorKind(str(k).lower()) for k in kwargs["retryable_errors"])
        return cls(**kwargs)

    def problems(self, path: str = "retry") -> list[str]:
        out = []
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            out.append(f"{path}.max_retries: {self.max_retries!r} must be an integer >= 0 (0 disables retries)")
        if not isinstance(self.base_delay_ms, (int, float)) or self.base_delay_ms < 0:
            out.append(f"{path}.base_delay_ms: {self.base_delay_ms!r} must be >= 0 milliseconds")
        if not isinstance(self.backoff_factor, (int, float)) or self.backoff_factor < 1:
            out.append(f"{path}.backoff_factor: {self.backoff_factor!r} must be a number >= 1")
        if not isinstance(self.max_delay_ms, (int, float)) or self.max_delay_ms < 0:
            out.append(f"{path}.max_delay_ms: {self.max_delay_ms!r} must be >= 0 milliseconds")
        if self.deadline_ms is not None and (not isinstance(self.deadline_ms, (int, float)) or self.deadline_ms <= 0):
            out.append(f"{path}.deadline_ms: {self.deadline_ms!r} must be > 0 milliseconds, or null for none")
        if isinstance(self.max_retry_after_s, bool) or not isinstance(self.max_retry_after_s, (int, float)) \
                or self.max_retry_after_s < 0:
            out.append(f"{path}.max_retry_after_s: {self.max_retry_after_s!r} must be >= 0 seconds (the longest "
                       "Retry-After honoured; a server asking for more fails the row at once)")
        return out

    # -- behaviour -----------------------------------------------------------------------------
    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, ModelError) and error.recoverable and error.kind in self.retryable_errors

    def too_long(self, error: ModelError) -> ModelError:
        """``error`` itself, or, when the server asked to wait longer than ``max_retry_after_s``, an
        unrecoverable error of the same kind saying so (the row fails now instead of stalling)."""
        if error.retry_after is None or error.retry_after <= self.max_retry_after_s or not self.should_retry(error):
            return error
        return ModelError(error.kind, f"{error.message}; the server asked to wait {error.retry_after:.0f} s, more "
                          f"than retry.max_retry_after_s={self.max_retry_after_s:g}: not waiting (raise "
                          "max_retry_after_s to wait that long)", recoverable=False, http_status=error.http_status,
                          retry_after=error.retry_after, model=error.model)

    def backoff_seconds(self, attempt: int, error: BaseException | None = None) -> float:
        """Full-jitter exponential backoff for retry number ``attempt`` (1-based), at least Retry-After
        (which may exceed ``max_delay_ms``: the server knows when it will answer again)."""
        cap = min(self.max_delay_ms, self.base_delay_ms * self.backoff_factor ** (attempt - 1)) / 1000.0
        delay = random.uniform(0, cap)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.max_retry_after_s))
        return delay

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        delay = self.backoff_seconds(state.attempt_number, error)
        if self.deadline_ms is not None:
            remaining = self.deadline_ms / 1000.0 - (time.monotonic() - state.start_time)
            delay = max(0.0, min(delay, remaining))
        return delay

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number > self.max_retries:
            return True
        if self.deadline_ms is not None:
            elapsed = time.monotonic() - state.start_time
            error = state.outcome.exception() if state.outcome else None
            retry_after = getattr(error, "retry_after", None) or 0.0
            # Waiting past the deadline only to fail later is pointless: stop now.
            return elapsed + retry_after >= self.deadline_ms / 1000.0
        return False

    def async_retrying(self, on_retry: Callable[[tenacity.RetryCallState], None] | None = None):
        """A tenacity.AsyncRetrying configured from this policy (re-raises the last error)."""
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.should_retry),
            stop=self._stop,
            wait=self._wait,
            reraise=True,
            before_sleep=on_retry,
        )

    async def run(self, fn: Callable[[], Awaitable[T]], on_retry=None) -> tuple[T, int]:
        """Await ``fn()`` under this policy; return (result, attempts).

        The first attempt runs without tenacity: most calls succeed at once, and setting up a
        tenacity iteration costs more CPU than the rest of the engine's work for a call. When the
        first attempt fails with a retryable error, tenacity takes over from attempt 1 (the
        failure is replayed to it without a new request), so waits and stops are all tenacity's.
        """
        try:
            return await fn(), 1
        except ModelError as error:
            error = self.too_long(error)
            if not self.should_retry(error) or self.max_retries == 0:
                raise error from None
            replay: list[ModelError] = [error]

        async def attempt() -> T:
            if replay:
                raise replay.pop()
            try:
                return await fn()
            except ModelError as error:
                raise self.too_long(error) from None

        attempts = 0
        async for retry_attempt in self.async_retrying(on_retry):
            with retry_attempt:
                attempts = retry_attempt.retry_state.attempt_number
                result = await attempt()
        return result, attempts
