"""RequestPool: how many requests may be in flight to one model, and how fast they may start.

Every request takes, in this order and first-come first-served:

* a concurrency slot (``limit`` of them; ``limit`` adapts, see below),
* one request from the RPM token bucket (refilled continuously at rpm/60 per s, holding one
  second's share: providers enforce a per-minute limit in per-second slices -- 600 RPM is at most 10
  in any second -- so a minute's worth sent at once would earn 429s for most of it),
* ``estimated_tokens`` from the TPM token bucket (capacity ``tpm``, refilled at tpm/60 per s).

A request estimated at more tokens than the whole TPM capacity is admitted when the bucket is full
(it then leaves the bucket in debt, so the following requests wait for the real rate) instead of
waiting forever. ``slot.settle(actual_tokens)`` corrects the estimate once the usage is known.

Adaptive slow-down (AIMD, as TCP does it): ``record_rate_limited()`` halves ``limit`` (floor 1) -
at most once per ``decrease_interval_s``, because the 429s of requests that were already in flight
describe the old limit, and halving once per 429 would collapse the pool to 1; every
``recover_after`` successes ``record_success()`` raises ``limit`` by 1, back up to
``max_concurrency``.

What the provider says about its own budgets is heeded before it refuses: ``observe_budget``
(fed by Model from every answer's ``x-ratelimit-remaining-*`` / ``anthropic-ratelimit-*-remaining``
headers) holds every new request until the reset time once a budget reaches 0, and lowers ``limit``
to the requests that are left; ``record_rate_limited(retry_after)`` holds new requests for as long
as a 429 asked, so the other requests in the queue do not each earn their own 429.

Design: pure asyncio, one event loop. The uncontended path takes no lock, creates no future and
never yields to the loop. Waiters queue in a deque of futures; whoever frees a resource (a release,
a raised limit, the one refill timer) admits as many waiters from the head as now fit, in arrival
order, and stops at the first that does not fit, so a big request at the head is not starved by
small ones behind it.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Awaitable, Callable

__all__ = ["RequestPool", "TokenBucket"]


class TokenBucket:
    """``per_period`` tokens per ``period_s``, refilled continuously; starts full. It holds at most
    ``window_s``'s share of them (at least 1), or the whole period's when ``window_s`` is None."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, per_period: float, now: float, period_s: float = 60.0, window_s: float | None = None):
        if per_period <= 0:
            raise ValueError("a token bucket needs a capacity > 0")
        self.rate = float(per_period) / period_s
        self.capacity = float(per_period) if window_s is None else max(1.0, self.rate * window_s)
        self.tokens = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def delay(self, amount: float) -> float:
        """Seconds until ``amount`` (capped at capacity) is available; 0 if it is now."""
        need = min(float(amount), self.capacity) - self.tokens
        return 0.0 if need <= 1e-9 else need / self.rate


class _Slot:
    """The async context manager returned by ``RequestPool.slot``."""

    __slots__ = ("_pool", "tokens", "_held")

    def __init__(self, pool: "RequestPool", tokens: int):
        self._pool = pool
        self.tokens = tokens
        self._held = False

    async def __aenter__(self) -> "_Slot":
        await self._pool._acquire(self.tokens)
        self._held = True
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._held:
            self._held = False
            self._pool._release()

    def settle(self, actual_tokens: int) -> None:
        """Charge (or refund) the TPM bucket the difference between actual and estimated tokens."""
        bucket = self._pool._tpm
        if bucket is not None:
            bucket.tokens = min(bucket.capacity, bucket.tokens - (actual_tokens - self.tokens))
        self.tokens = actual_tokens


class RequestPool:
    def __init__(self, max_concurrency: int, rpm: int | None = None, tpm: int | None = None, *,
                 recover_after: int = 10, decrease_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if recover_after < 1:
            raise ValueError("recover_after must be >= 1")
        self.max_concurrency = int(max_concurrency)
        self.recover_after = recover_after
        self.decrease_interval_s = decrease_interval_s
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._rpm = TokenBucket(rpm, now, window_s=1.0) if rpm else None
        self._tpm = TokenBucket(tpm, now) if tpm else None
        self._limit = self.max_concurrency
        self._in_flight = 0
        self._successes = 0
        self._last_decrease: float | None = None
        self._waiters: collections.deque[tuple[asyncio.Future, int]] = collections.deque()  # (future, tokens)
        self._timer: asyncio.Task | None = None  # wakes the queue when the head's rate budget refills
        self._hold_until = 0.0  # no request starts before this clock time (a spent provider budget)
        self.rate_limited_count = 0

    # -- public ----------------------------------------------------------------------------------
    def slot(self, estimated_tokens: int = 0) -> _Slot:
        """``async with pool.slot(n) as s:`` - admitted when a slot and the rate budgets allow."""
        return _Slot(self, int(estimated_tokens or 0))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def limit(self) -> int:
        """The effective concurrency limit (<= max_concurrency after rate limiting)."""
        return self._limit

    @property
    def held_s(self) -> float:
        """Seconds before a new request may start because the provider said to wait (0: none)."""
        return max(0.0, self._hold_until - self._clock()) if self._hold_until else 0.0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def hold_for(self, seconds: float) -> None:
        """Start no new request for ``seconds`` (a longer hold already in place is kept)."""
        if seconds and seconds > 0:
            self._hold_until = max(self._hold_until, self._clock() + float(seconds))

    def observe_budget(self, remaining: int | None, exhausted_for_s: float | None) -> None:
        """The provider reported ``remaining`` requests and, when a budget is spent, how long until it
        refills: hold new requests that long, and keep no more in flight than the requests left."""
        if exhausted_for_s:
            self.hold_for(exhausted_for_s)
        if remaining is not None and 0 < remaining < self._limit:
            self._limit = remaining
            self._successes = 0

    def record_rate_limited(self, retry_after: float | None = None) -> None:
        """The provider answered 429: halve the limit (floor 1), at most once per decrease_interval_s,
        and hold new requests for ``retry_after`` seconds when the server said when to come back."""
        self.rate_limited_count += 1
        self._successes = 0
        if retry_after:
            self.hold_for(retry_after)
        now = self._clock()
        if self._last_decrease is not None and now - self._last_decrease < self.decrease_interval_s:
            return
        self._last_decrease = now
        self._limit = max(1, self._limit // 2)

    def record_success(self) -> None:
        """A request succeeded: every ``recover_after`` of them the limit grows by 1."""
        if self._limit >= self.max_concurrency:
            return
        self._successes += 1
        if self._successes >= self.recover_after:
            self._successes = 0
            self._limit += 1
            self._notify()

    # -- internals -------------------------------------------------------------------------------
    def _rate_delay(self, tokens: int) -> float:
        if self._rpm is None and self._tpm is None and not self._hold_until:
            return 0.0
        now = self._clock()
        delay = 0.0
        if self._hold_until:
            if self._hold_until > now:
                delay = self._hold_until - now
            else:
                self._hold_until = 0.0
        if self._rpm is not None:
            self._rpm.refill(now)
            delay = max(delay, self._rpm.delay(1))
        if self._tpm is not None and tokens > 0:
            self._tpm.refill(now)
            delay = max(delay, self._tpm.delay(tokens))
        return delay

    def _take(self, tokens: int) -> None:
        self._in_flight += 1
        if self._rpm is not None:
            self._rpm.tokens -= 1
        if self._tpm is not None and tokens > 0:
            self._tpm.tokens -= tokens  # may go negative for an over-capacity request: a debt

    async def _acquire(self, tokens: int) -> None:
        if not self._waiters and self._in_flight < self._limit and self._rate_delay(tokens) == 0.0:
            self._take(tokens)  # fast path: no queue, no await
            return
        me = asyncio.get_running_loop().create_future()
        self._waiters.append((me, tokens))
        self._dispatch()
        try:
            await me  # resolved by _dispatch once this request has been admitted (its slot taken)
        except BaseException:
            if me.done() and not me.cancelled():  # admitted, then cancelled before it could start
                self._give_back(tokens)
            else:
                try:
                    self._waiters.remove((me, tokens))
                except ValueError:
                    pass
            self._dispatch()  # it may have been the head holding the others back
            raise

    def _dispatch(self) -> None:
        """Admit waiters from the head of the queue while a slot and the rate budgets allow.

        Admission happens here, in the releasing code, for as many waiters as fit: each admitted
        waiter only has to resume. (A queue whose head admits itself and then wakes the next one
        admits one request per event-loop iteration: measured, it kept ~200 of 256 slots busy at
        2,000 requests/s while hundreds waited.)"""
        waiters = self._waiters
        while waiters:
            future, tokens = waiters[0]
            if future.done():  # cancelled while waiting
                waiters.popleft()
                continue
            if self._in_flight >= self._limit:
                return
            delay = self._rate_delay(tokens)
            if delay > 0.0:
                self._wake_after(delay)
                return
            waiters.popleft()
            self._take(tokens)
            future.set_result(None)
        if self._timer is not None:  # nobody left to wake
            self._timer.cancel()
            self._timer = None

    def _wake_after(self, delay: float) -> None:
        """One timer at a time: the head of the queue waits for a bucket or a provider's hold."""
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._sleep_then_dispatch(delay))

    async def _sleep_then_dispatch(self, delay: float) -> None:
        await self._sleep(delay)
        self._timer = None
        self._dispatch()

    def _give_back(self, tokens: int) -> None:
        """Undo ``_take`` for a request admitted but never started."""
        if self._rpm is not None:
            self._rpm.tokens = min(self._rpm.capacity, self._rpm.tokens + 1)
        if self._tpm is not None and tokens > 0:
            self._tpm.tokens = min(self._tpm.capacity, self._tpm.tokens + tokens)
        self._release()

    def _notify(self) -> None:
        if self._waiters:
            self._dispatch()

    def _release(self) -> None:
        self._in_flight -= 1
        if self._waiters:
            self._dispatch()

    def __repr__(self) -> str:
        return (f"RequestPool(limit={self._limit}/{self.max_concurrency}, in_flight={self._in_flight}, "
                f"waiting={len(self._waiters)})")
