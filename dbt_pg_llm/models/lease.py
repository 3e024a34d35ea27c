"""Send leases: a request for a claimed key is sent only while the claim is surely still ours.

A fill claims keys in Postgres (pg/claims.py) so that concurrent runs pay once per key; another
run may take a claim over once its holder looks dead. A holder that was only paused (SIGSTOP, a
frozen VM) or lost its claim session must then not send the requests it had queued: the other
run pays for those keys. So every request of a fill passes ``admit_send`` at the moment the
model's pool gives it a slot (``Model.acall``, in the engine's loop thread, so a request queued
before a pause is checked after it), and each retry, fallback, strategy member and packed request
does the same. No database work per request: a monotonic-clock compare against the lease.

``SendLease`` (one per fill): ``valid_until`` is the start of the last heartbeat that renewed all
our claims (pg/claims.ClaimHeartbeat) plus ``lease_s``; the same statement gives the claims a
server-side ``lease_until = now() + lease_s`` and nobody takes a claim over before its
``lease_until`` has passed, so while our clock is below ``valid_until`` no key of ours can have
been taken. Once it is not (a paused process, a heartbeat that cannot reach Postgres), requests
are held until a beat renews the lease (``renewal_wanted`` asks the heartbeat to beat at once);
that beat also says which claims are no longer ours, and requests for those are dropped without
being sent (``ErrorKind.CLAIM_LOST``: the fill waits for the other run's answer instead). A
request held for ``hold_s`` without a renewal is dropped too. ``revoke()`` drops every request
not yet sent (a fill that is failing).

Which keys a request is for: the engine runs each map task's call under ``sending_for`` (its
context names the tag's keys); a call outside such a task is not checked.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from ..errors import ErrorKind, ModelError

__all__ = ["SendLease", "admit_send", "sending_for"]

T = TypeVar("T")
_ACTIVE: contextvars.ContextVar[tuple["SendLease", frozenset] | None] = contextvars.ContextVar(
    "dbt_pg_llm_send_lease", default=None)


class SendLease:
    """The client side of one fill's claim lease (see the module docstring); thread-safe."""

    def __init__(self, lease_s: float, hold_s: float, clock: Callable[[], float] = time.monotonic):
        if lease_s <= 0 or hold_s <= 0:
            raise ValueError("lease_s and hold_s must be > 0")
        self.lease_s = float(lease_s)
        self.hold_s = float(hold_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: set[str] = set()  # keys claimed and not released: what a renewal must confirm
        self._lost: frozenset[str] = frozenset()  # taken over by another run: never sent for (replaced, not
        # mutated, so that admit's fast path reads it without the lock)
        self._valid_until = float("-inf")
        self._revoked = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self.renewal_wanted = threading.Event()  # set while a request waits: the heartbeat beats at once
        self.dropped = 0  # requests not sent because of this lease

    # -- the claims side (fill thread, heartbeat thread) --------------------------------------------
    def claiming(self) -> float | None:
        """Call right before a claim statement: its start, when nothing is held (the statement then
        starts every claim we will hold, so its start + lease_s bounds them all), else None."""
        with self._lock:
            return None if self._held else self._clock()

    def claimed(self, keys: Iterable[str], started: float | None) -> None:
        """``keys`` are ours now (claimed or taken over by a statement that began at ``started``)."""
        keys = set(keys)
        with self._lock:
            self._held |= keys
            if not self._lost.isdisjoint(keys):
                self._lost = self._lost - keys
            if started is not None and keys:
                self._renew(started)

    def released(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._held.difference_update(keys)

    def held(self) -> set[str]:
        """A snapshot of the keys held: take it right before a renewal statement starts."""
        with self._lock:
            return set(self._held)

    def renewed(self, started: float, snapshot: set[str], ours: set[str]) -> set[str]:
        """A beat that began at ``started`` (before ``snapshot`` was taken) renewed ``ours``: the
        keys of ``snapshot`` still held and not in ``ours`` were taken over (returned, newly lost)."""
        with self._lock:
            lost = (snapshot - ours) & self._held
            self._held -= lost
            if lost:
                self._lost = self._lost | lost
            self._renew(started)  # after _lost: a lock-free reader that sees the new lease sees the new _lost
        return lost

    def revoke(self) -> None:
        """Send nothing more (requests already sent are not affected)."""
        with self._lock:
            self._revoked = True
            self._wake()

    @property
    def revoked(self) -> bool:
        return self._revoked

    def _renew(self, started: float) -> None:  # under the lock
        self._valid_until = max(self._valid_until, started + self.lease_s)
        self._wake()

    def _wake(self) -> None:  # under the lock
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(_set, waiter)
            except RuntimeError:  # that loop is closed
                pass

    # -- the sending side (engine loop thread) -------------------------------------------------------
    def admits_now(self, keys: frozenset) -> bool:
        """The fast path, without the lock (every request asks): the lease runs and no key is lost.
        Reads ``_valid_until`` before ``_lost``, the reverse of the order they are written in."""
        return not self._revoked and self._clock() < self._valid_until and self._lost.isdisjoint(keys)

    async def admit(self, keys: frozenset) -> str | None:
        """None: send now. Else why not: the key was taken over, the lease could not be renewed
        within ``hold_s``, or the lease was revoked."""
        held_since = None
        while True:
            with self._lock:
                if self._revoked:
                    return "the fill is stopping"
                if keys and not self._lost.isdisjoint(keys):
                    return "another run took over its claim"
                now = self._clock()
                if now < self._valid_until:
                    return None
                loop = asyncio.get_running_loop()
                waiter = loop.create_future()
                self._waiters.append((loop, waiter))
            self.renewal_wanted.set()
            held_since = now if held_since is None else held_since
            remaining = held_since + self.hold_s - now
            if remaining <= 0:
                return f"its claim could not be confirmed for {self.hold_s:g}s"
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass


def _set(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def sending_for(lease: SendLease, tag: Any, call: Awaitable[T]) -> T:
    """Await ``call`` (a coroutine not started yet) with its requests checking ``lease`` for
    ``tag``'s keys (a key, or a list of keys: a packed request's rows). Run it as a task of its
    own: the task's context (a copy made when it was created) is where the keys are set."""
    _ACTIVE.set((lease, frozenset(tag) if isinstance(tag, (list, tuple)) else frozenset((tag,))))
    return await call


async def admit_send(model_name: str) -> None:
    """Raise ModelError(CLAIM_LOST) if the active lease says this request must not be sent."""
    active = _ACTIVE.get()
    if active is None:
        return
    lease, keys = active
    if lease.admits_now(keys):
        return
    why = await lease.admit(keys)
    if why is not None:
        lease.dropped += 1
        raise ModelError(ErrorKind.CLAIM_LOST, f"not sent: {why}", recoverable=False, model=model_name)
