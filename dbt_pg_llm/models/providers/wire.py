"""How a provider's request reaches the server: one POST of JSON bytes, the answer read whole.

* ``AiohttpWire`` -- the default: one aiohttp ``ClientSession`` per event loop (sessions are bound
  to the loop that made them), its connection pool sized to the model's ``max_concurrency``.
* ``HttpxWire`` -- an injected ``httpx.AsyncBaseTransport`` (unit tests' ``httpx.MockTransport``,
  or any transport httpx offers), driven through one ``httpx.AsyncClient`` per loop.

Both answer with a ``WireResponse`` (status, case-insensitive headers, body bytes) and raise only
``TRANSPORT_ERRORS`` when there is no HTTP answer; ``classify_transport_error`` (base.py) turns
those into ModelErrors. Neither retries: RetryPolicy (retry.py) is the only retry layer.

Why aiohttp directly on the hot path (decision 0019): going through httpx (its Request and Response
objects, header normalisation, the httpx-aiohttp adapter's stream wrapper) cost ~0.1-0.15 ms of CPU
per request on top of aiohttp's own ~0.17 ms: at thousands of requests per second that was a third
of the engine's CPU. Connecting (pool wait + connect) has aiohttp's ``timeout_ms`` timers; the
answer has ``AnswerDeadline``'s (below): ``timeout_ms`` from the POST to the whole answer, and a
stall of this process (SIGSTOP, a starved loop) is not counted as the server's slowness (decision
0023).
"""
from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Mapping

import aiohttp
import httpx
import yarl

from ..config import ModelConfig

__all__ = ["WireResponse", "AiohttpWire", "HttpxWire", "AnswerDeadline", "wire_for", "env_proxy",
           "TRANSPORT_ERRORS"]

# what a POST may raise when it gets no HTTP answer (refused, dropped, timed out, bad URL)
TRANSPORT_ERRORS = (aiohttp.ClientError, httpx.HTTPError, OSError, asyncio.TimeoutError)


@dataclass(slots=True)
class WireResponse:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive ``get``
    content: bytes


class AnswerDeadline:
    """``seconds`` for one request's answer, without blaming the server for a stall of this process.

    aiohttp's ``sock_read`` timer, a plain loop timer, fired as soon as a SIGSTOPped process woke:
    after SIGCONT, uvloop's epoll_wait returns EINTR with no time left and libuv runs the due timers
    before it polls a socket again (asyncio's own loop happens to poll first). Answers already in
    the socket buffers -- paid for -- were dropped as timeouts and re-requested (16 keys paid twice).

    The deadline is ``seconds`` without a byte of the answer, as ``sock_read`` was (``progress``
    at the headers and at every chunk: a streamed answer lives as long as it flows). A timer that
    fires more than ``STALL_S`` late means the loop did not run meanwhile (the process was stopped
    or starved): the request may have left only at wake-up, so it gets a whole ``seconds`` again
    (at most ``MAX_STALLS`` times). A deadline that fires on time does not end the request either:
    it arms a short grace timer, so the loop polls the sockets once after the deadline and an
    answer already there completes (cancelling this). Only a grace timer that fires on time times
    the request out: it cancels the request's task one loop pass later (a task step the answer
    already queued runs first), and ``timed_out`` tells that cancellation from the caller's.
    (asyncio.timeout would do the cancelling, but Python 3.10 has none and async-timeout's cannot
    be moved from a timer callback.)
    """

    GRACE_S = 0.1  # the loop polls its sockets before this fires (libuv runs due timers first)
    STALL_S = 0.25  # a timer this late: the loop did not run meanwhile (normal loop lag is ms)
    MAX_STALLS = 3  # a request is never held longer than (1 + MAX_STALLS) timeouts and the stalls
    __slots__ = ("_loop", "_task", "_cancelling", "_seconds", "_handle", "_at", "_stalls", "_last", "expired")

    def __init__(self, seconds: float):
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        # cancellation requests already pending (3.11+): ours is told apart from the caller's by them
        self._cancelling = self._task.cancelling() if hasattr(self._task, "cancelling") else 0
        self._seconds = seconds
        self._stalls = 0
        self.expired = False
        self._last = self._loop.time()
        self._arm(seconds, self._deadline)

    def progress(self) -> None:
        """Bytes arrived: the deadline moves (lazily: the timer re-arms when it fires, not per chunk)."""
        self._last = self._loop.time()

    def _arm(self, delay: float, then) -> None:
        self._at = self._loop.time() + delay
        self._handle = self._loop.call_at(self._at, then)

    def _stalled(self) -> bool:
        """True (and re-armed for a whole timeout) when this timer fired late: the process stalled."""
        if self._loop.time() - self._at <= self.STALL_S or self._stalls >= self.MAX_STALLS:
            return False
        self._stalls += 1
        self._arm(self._seconds, self._deadline)
        return True

    def _deadline(self) -> None:
        if self._stalled():
            return
        left = self._last + self._seconds - self._loop.time()
        if left > 0:  # the answer is flowing
            self._arm(left, self._deadline)
        else:
            self._arm(min(self.GRACE_S, self._seconds), self._grace_over)

    def _grace_over(self) -> None:
        if not self._stalled():
            self._handle = self._loop.call_soon(self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def timed_out(self) -> bool:
        """After a CancelledError: was it this deadline's (and no one else's) cancellation?"""
        if not self.expired:
            return False
        uncancel = getattr(self._task, "uncancel", None)  # 3.11+: count ours off, as asyncio.timeout does
        return uncancel is None or uncancel() <= self._cancelling

    def cancel(self) -> None:
        self._handle.cancel()


class AiohttpWire:
    def __init__(self, config: ModelConfig):
        self._limit = config.max_concurrency
        seconds = self._seconds = config.timeout_ms / 1000.0
        # no sock_read: the answer's deadline is AnswerDeadline's (a process stall is not a timeout)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds)
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._targets: dict[str, tuple[yarl.URL, str | None]] = {}

    def _session(self) -> aiohttp.ClientSession:
        loop_id = id(asyncio.get_running_loop())
        session = self._sessions.get(loop_id)
        if session is None:
            # httpx's SSL context: certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR, as before
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=httpx.create_ssl_context())
            # not trust_env: aiohttp then reads the proxy variables and ~/.netrc on every request
            # (measured: it halved the throughput); the proxy is looked up once per URL instead
            # no cookie jar: model APIs set no cookies we need, and the jar is consulted on every request
            session = self._sessions[loop_id] = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())
        return session

    def _target(self, url: str) -> tuple[yarl.URL, str | None]:
        """The URL parsed once (aiohttp parses a str on every request) and its proxy."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = (yarl.URL(url), env_proxy(url))
        return target

    async def post(self, url: str, content: bytes, headers: Mapping[str, str]) -> WireResponse:
        parsed, proxy = self._target(url)
        deadline = AnswerDeadline(self._seconds)
        try:
            async with self._session().post(parsed, data=content, headers=headers, allow_redirects=False,
                                            proxy=proxy) as response:
                deadline.progress()
                stream, chunks = response.content, []
                while chunk := await stream.readany():
                    chunks.append(chunk)
                    deadline.progress()
                return WireResponse(response.status, response.headers, b"".join(chunks))
        except asyncio.CancelledError:
            if deadline.timed_out():
                raise asyncio.TimeoutError(f"no answer within {self._seconds:g} s") from None
            raise
        finally:
            deadline.cancel()

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            try:
                await session.close()
            except RuntimeError:  # its loop is gone; nothing left to close
                pass


class HttpxWire:
    def __init__(self, config: ModelConfig, transport: httpx.AsyncBaseTransport):
        self._transport = transport
        self._timeout = httpx.Timeout(config.timeout_ms / 1000.0)
        self._clients: dict[int, httpx.AsyncClient] = {}

    async def post(self, url: str, content: bytes, headers: Mapping[str, str]) -> WireResponse:
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = self._clients[loop_id] = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        response = await client.post(url, content=content, headers=headers)
        return WireResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.aclose()
            except RuntimeError:
                pass


def wire_for(config: ModelConfig, transport: httpx.AsyncBaseTransport | None = None) -> AiohttpWire | HttpxWire:
    """``transport`` (a test's) through httpx, else aiohttp."""
    return HttpxWire(config, transport) if transport is not None else AiohttpWire(config)


def env_proxy(url: str) -> str | None:
    """HTTP(S)_PROXY / ALL_PROXY for ``url`` unless NO_PROXY exempts its host, as httpx does."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy
