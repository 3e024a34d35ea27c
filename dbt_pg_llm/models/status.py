"""Live health of one model: ModelStatus (what a dashboard or ``dbt run`` summary shows) and the
CircuitBreaker that stops sending requests to a model that keeps failing.

Why a breaker at all: when a provider is down, every row of a 100k-row model would otherwise wait
for its own timeout and retries. After ``failure_threshold`` consecutive failures the breaker
*opens* and calls fail fast (the failover layer can then go to a backup model); after
``reset_timeout_s`` one probe request is let through (*half_open*) to find out whether the model
is back.

Both classes are written to from one asyncio loop and read from other threads (dbt threads, a
status endpoint); a small ``threading.Lock`` keeps every read consistent.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..errors import ErrorKind, redact

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "BREAKER_ERRORS", "CircuitBreaker", "ModelStatus"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: Error kinds that say "the model (endpoint) is unusable right now" and so count towards opening
#: the circuit:
#:   TIMEOUT, API   the endpoint is slow, down, overloaded or rejects our credentials;
#:   QUOTA          billing is exhausted: every further call fails the same way until a human acts,
#:                  so failing fast (and failing over) is exactly right.
#: Not counted (neutral: they neither count nor reset the streak):
#:   RATE_LIMITED   the endpoint is healthy but busy; the pool's adaptive slow-down and the retry
#:                  layer's Retry-After handling deal with it, and opening the circuit on 429s
#:                  would turn a throttle into an outage;
#:   INVALID_INPUT  our request was wrong (HTTP 400): a property of that row, not of the model;
#:   INVALID_OUTPUT the model answered, just not in the requested format: again per row;
#:   INTERNAL       a bug in this engine, not the model's fault.
BREAKER_ERRORS = frozenset({ErrorKind.TIMEOUT, ErrorKind.API, ErrorKind.QUOTA})


def _kind_of(error: Any) -> ErrorKind | None:
    """Accept a ModelError, an ErrorKind (or its value) or a failed ModelOutput."""
    if error is None:
        return None
    if isinstance(error, ErrorKind):
        return error
    if isinstance(error, str):
        try:
            return ErrorKind(error)
        except ValueError:
            return None
    for attr in ("kind", "error_kind"):
        kind = getattr(error, attr, None)
        if isinstance(kind, ErrorKind):
            return kind
    return ErrorKind.INTERNAL if isinstance(error, BaseException) else None


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive counted failures (see BREAKER_ERRORS);
    open -> half_open once ``reset_timeout_s`` has passed; in half_open exactly one probe at a time
    is allowed: its success closes the circuit, its failure opens it again for another timeout.

    A success in any state closes the circuit (the model demonstrably answered). A probe whose
    outcome is never recorded (its task was cancelled) does not wedge the breaker: after another
    ``reset_timeout_s`` a new probe is allowed.
    """

    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None  # when the half-open probe was let through
        self.open_count = 0  # how many times the circuit opened (for reports)

    # -- reading ---------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if self._state == OPEN and now - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._probe_started = None

    @property
    def state(self) -> str:
        with self._lock:
            self._advance(self._clock())
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    # -- deciding and recording ------------------------------------------------------------------
    def allow(self) -> bool:
        """May a request be sent now? In half_open this hands out the single probe."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                return False
            if self._probe_started is None or now - self._probe_started >= self.reset_timeout_s:
                self._probe_started = now
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._probe_started = None

    def record_failure(self, error: Any = ErrorKind.API) -> bool:
        """Record a failed call; returns True when the error counted towards opening the circuit.

        ``error`` is a ModelError, an ErrorKind or a failed ModelOutput. Errors outside
        BREAKER_ERRORS only release a half-open probe slot (so another probe can be tried).
        """
        kind = _kind_of(error)
        with self._lock:
            now = self._clock()
            self._advance(now)
            if kind not in BREAKER_ERRORS:
                if self._state == HALF_OPEN:
                    self._probe_started = None
                return False
            self._failures += 1
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                self._state = OPEN
                self._opened_at = now
                self._probe_started = None
                self.open_count += 1
            return True

    def reset(self) -> None:
        self.record_success()

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, consecutive_failures={self._failures})"


@dataclass
class ModelStatus:
    """The live status of one model, updated by the model around each request.

    ``avg_response_time_ms`` is the running mean for the first ``1/ema_alpha`` requests and an
    exponential moving average after that, so it starts accurate and then follows recent latency.
    When a ``breaker`` is attached, ``circuit_state``, ``consecutive_failures`` and ``available``
    follow it (``available`` = enabled and the circuit not open).
    """

    available: bool = True
    current_requests: int = 0
    max_requests: int = 0
    last_error_time: datetime | None = None
    last_error_message: str | None = None
    avg_response_time_ms: float = 0.0
    consecutive_failures: int = 0
    circuit_state: str = CLOSED
    enabled: bool = True
    ema_alpha: float = field(default=0.1, repr=False)
    breaker: CircuitBreaker | None = field(default=None, repr=False, compare=False)
    _samples: int = field(default=0, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def request_started(self) -> None:
        with self._lock:
            self.current_requests += 1
            self.max_requests = max(self.max_requests, self.current_requests)

    def request_finished(self, latency_ms: float | None = None, error: Any = None) -> None:
        """One request ended. ``error`` (ModelError / failed ModelOutput / None) marks a failure.

        Latency of failed requests is included: a model that times out *is* slow.
        """
        with self._lock:
            self.current_requests = max(0, self.current_requests - 1)
            if latency_ms is not None:
                self._samples += 1
                alpha = max(self.ema_alpha, 1.0 / self._samples)
                self.avg_response_time_ms += alpha * (float(latency_ms) - self.avg_response_time_ms)
            if error is None:
                self.consecutive_failures = 0
            else:
                self.consecutive_failures += 1
                self.last_error_time = datetime.now(timezone.utc)
                message = getattr(error, "message", None) or getattr(error, "error_message", None) or str(error)
                kind = _kind_of(error)
                prefix = f"{kind.value}: " if kind is not None else ""
                self.last_error_message = redact(message if message.startswith(prefix) else prefix + message)
            self._sync_locked()

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self.enabled = bool(enabled)
            self._sync_locked()

    def refresh(self) -> "ModelStatus":
        """Pull the breaker's current state (it moves from open to half_open with time alone)."""
        with self._lock:
            self._sync_locked()
        return self

    def _sync_locked(self) -> None:
        if self.breaker is not None:
            self.circuit_state = self.breaker.state
            self.consecutive_failures = self.breaker.consecutive_failures
        self.available = self.enabled and self.circuit_state != OPEN

    def snapshot(self) -> dict:
        """A consistent, JSON-able copy (datetime as ISO-8601 text)."""
        with self._lock:
            self._sync_locked()
            return {
                "available": self.available,
                "enabled": self.enabled,
                "current_requests": self.current_requests,
                "max_requests": self.max_requests,
                "last_error_time": self.last_error_time.isoformat() if self.last_error_time else None,
                "last_error_message": self.last_error_message,
                "avg_response_time_ms": round(self.avg_response_time_ms, 3),
                "consecutive_failures": self.consecutive_failures,
                "circuit_state": self.circuit_state,
            }
