"""Spend limits: a hard cap on what requests may cost, reserved BEFORE each request is sent.

Every HTTP attempt (first try, retry, failover to a backup, each member of a strategy, a packed
batch request) goes through ``Model.acall``'s attempt, which reserves the attempt's worst-case cost
(``estimate_cost``) from the active ``SpendLimit`` before sending, and settles the reservation to
the real cost when the answer arrives. A request whose reservation does not fit is not sent: it
fails with ``ErrorKind.BUDGET``. So at any moment ``spent + reserved <= cap``, and since no
request can cost more than its reservation, what the provider bills never exceeds the cap, however
many requests are in flight and however many threads share the limit.

Which limit is active is a context variable (``using_limit`` / ``active_limit``): ``Engine.acall``
and ``Engine.map_unordered`` set it from their ``spend_limit=`` argument; asyncio tasks copy the
context when created, so every call made on behalf of that call (failover, strategy members, the
cache's single-flight computation) reserves from the same limit without passing it around.

The worst case of one request (``estimate_cost``, decisions 0009 and 0027)::

    cost = tokens.prompt_tokens_bound(config, inp) * input price
         + tokens.output_tokens_bound(config, inp) * output price

both upper bounds of what the provider counts, per the model's ``tokenizer`` (tokens.py): exact
OpenAI encodings for OpenAI models, the simulator's own count, else UTF-8 bytes (a bound for any
byte-level BPE tokenizer); output: ``max_tokens``, and for a classify request its longest label +
a margin (what Model.acall sends as ``max_tokens``).

Settling an attempt: an answer read -> its real cost; an HTTP error status (the provider said
no: 4xx / 5xx) or a request that never left (no connection could be opened: ``ModelError.unsent``,
decision 0025) -> nothing; no answer we could read after sending (read timeout, dropped connection,
unreadable body, cancellation) -> the full reservation is kept as spent, since the provider may
have billed it.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator

from .model_io import ModelInput
from .pricing import input_price_bound
from .tokens import output_tokens_bound, prompt_tokens_bound

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["SpendLimit", "Reservation", "estimate_cost", "estimate_prompt_tokens", "active_limit", "using_limit",
           "PER_MESSAGE_TOKENS", "REPLY_TOKENS", "STRUCTURED_OUTPUT_TOKENS"]

PER_MESSAGE_TOKENS = 8  # role and separators of one message (OpenAI documents 3-4)
REPLY_TOKENS = 8  # the tokens that prime the reply (OpenAI documents 3)
STRUCTURED_OUTPUT_TOKENS = 512  # a schema sent as response_format / a tool (Anthropic's tool prompt: ~350)
# a config no server can bill more than: UTF-8 bytes, a schema sent as a forced tool
_ANY_SERVER = SimpleNamespace(provider="anthropic", tokenizer="bytes", structured_output="tool", max_tokens=0)


def estimate_prompt_tokens(inp: ModelInput, config: "ModelConfig | None" = None) -> int:
    """An upper bound on the prompt tokens ``config``'s provider bills for ``inp`` (tokens.py);
    without a config, the byte bound of any byte-level BPE tokenizer (schema sent as a tool)."""
    return prompt_tokens_bound(config if config is not None else _ANY_SERVER, inp)


def estimate_cost(config: "ModelConfig", inp: ModelInput) -> float:
    """The worst-case cost in US dollars of one request of ``inp`` to a model configured by
    ``config``: ``estimate_prompt_tokens(inp, config)`` at the input price plus
    ``output_tokens_bound`` (``max_tokens``; a classify request's labels) at the output price.
    A request can never cost more."""
    # input_price_bound: any input token may be billed as a prompt-cache write (Anthropic, 1.25x)
    return (estimate_prompt_tokens(inp, config) * input_price_bound(config)
            + output_tokens_bound(config, inp) * config.cost_per_1k_output_tokens) / 1000.0


class SpendLimit:
    """A thread-safe budget: ``cap_usd`` (None: no cap, only counting), of which ``spent_usd`` is
    settled and ``reserved_usd`` held by requests in flight. ``refused`` counts refused reservations."""

    def __init__(self, cap_usd: float | None, spent_usd: float = 0.0):
        if cap_usd is not None and (isinstance(cap_usd, bool) or not isinstance(cap_usd, (int, float)) or cap_usd <= 0):
            raise ValueError(f"cap_usd: {cap_usd!r} must be a number > 0, or None for no cap")
        self.cap_usd = None if cap_usd is None else float(cap_usd)
        self._spent = float(spent_usd or 0.0)
        self._reserved = 0.0
        self._outstanding = 0  # reservations not settled yet (counted: float sums leave residues)
        self.refused = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    @property
    def spent_usd(self) -> float:
        return self._spent

    @property
    def reserved_usd(self) -> float:
        return self._reserved

    def __repr__(self) -> str:
        return f"SpendLimit(cap_usd={self.cap_usd!r}, spent_usd={self._spent:.8f}, reserved_usd={self._reserved:.8f})"

    def try_reserve(self, amount: float) -> "Reservation | None":
        """Reserve ``amount`` now if it fits beside what is spent and reserved; else None."""
        return self._reserve(float(amount), wait=False)[0]

    async def reserve(self, amount: float) -> "Reservation | None":
        """Reserve ``amount``, waiting while requests in flight hold reservations whose settling
        could make room; None (and ``refused`` + 1) once it cannot fit even if they all cost nothing."""
        amount = float(amount)
        while True:
            reservation, waiter = self._reserve(amount, wait=True)
            if waiter is None:
                return reservation
            await waiter

    def _reserve(self, amount: float, wait: bool) -> "tuple[Reservation | None, asyncio.Future | None]":
        with self._lock:
            if self.cap_usd is None or self._spent + self._reserved + amount <= self.cap_usd:
                self._reserved += amount
                self._outstanding += 1
                return Reservation(self, amount), None
            if not wait or self._spent + amount > self.cap_usd or not self._outstanding:
                self.refused += 1
                return None, None
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiters.append((loop, waiter))
            return None, waiter

    def _settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self._outstanding -= 1
            # exactly 0 once nothing is in flight: a float residue must never make a waiter wait forever
            self._reserved = max(0.0, self._reserved - reserved) if self._outstanding else 0.0
            self._spent += actual
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:  # every waiter tries again; those that still do not fit wait again
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Reservation:
    """``amount`` held from a SpendLimit until settled (exactly once; later calls do nothing)."""

    def __init__(self, limit: SpendLimit, amount: float):
        self.limit = limit
        self.amount = amount
        self.settled = False

    def settle(self, actual_usd: float) -> None:
        """The request cost ``actual_usd``: count it as spent and give back the rest."""
        if self.settled:
            return
        self.settled = True
        self.limit._settle(self.amount, float(actual_usd or 0.0))

    def release(self) -> None:
        """Nothing was billed (the provider answered with an error status, or no connection opened)."""
        self.settle(0.0)

    def keep(self) -> None:
        """The outcome is unknown (no readable answer): count the whole reservation as spent."""
        self.settle(self.amount)


_ACTIVE: contextvars.ContextVar[SpendLimit | None] = contextvars.ContextVar("dbt_pg_llm_spend_limit", default=None)


def active_limit() -> SpendLimit | None:
    """The SpendLimit calls made in the current context reserve from (None: no limit)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def using_limit(limit: SpendLimit | None) -> Iterator[None]:
    """Make ``limit`` the active one for the calls made inside (and the tasks they create);
    None leaves the active limit as it is."""
    if limit is None:
        yield
        return
    token = _ACTIVE.set(limit)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
