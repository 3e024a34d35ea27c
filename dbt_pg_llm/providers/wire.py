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
of the engine's CPU. The timeouts keep httpx's meaning (connect, read, pool each ``timeout_ms``).
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

__all__ = ["WireResponse", "AiohttpWire", "HttpxWire", "wire_for", "env_proxy", "TRANSPORT_ERRORS"]

# what a POST may raise when it gets no HTTP answer (refused, dropped, timed out, bad URL)
TRANSPORT_ERRORS = (aiohttp.ClientError, httpx.HTTPError, OSError, asyncio.TimeoutError)


@dataclass(slots=True)
class WireResponse:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive ``get``
    content: bytes


class AiohttpWire:
    def __init__(self, config: ModelConfig):
        self._limit = config.max_concurrency
        seconds = config.timeout_ms / 1000.0
        self._timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)
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
        async with self._session().post(parsed, data=content, headers=headers, allow_redirects=False,
                                        proxy=proxy) as response:
            body = await response.read()
            return WireResponse(response.status, response.headers, body)

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
