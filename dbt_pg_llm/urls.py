"""URLs that carry credentials: an ``api_url`` may hold ``user:password@`` (HTTP basic auth, e.g. a
gateway in front of vLLM) or a key in its query (``?key=...``, as some gateways want).

The credentials go on the wire and nowhere else:

* ``endpoint(base, path, params)``: the base URL with the provider's path appended *before* the
  query, so ``http://h/v1?key=K`` + ``/chat/completions`` is ``http://h/v1/chat/completions?key=K``;
* ``split_credentials(url)``: the URL without its userinfo, and the ``Basic`` Authorization value
  it stood for (sent as a header: aiohttp and httpx then behave the same, and the URL kept for
  error messages has no password in it);
* ``redact_url`` / ``redact_urls``: userinfo becomes ``***`` and every query value ``***``
  (except ``api-version``, which this package adds itself and is no secret), for any text that
  shows a URL: ``errors.redact`` applies ``redact_urls`` to everything it cleans;
* ``url_secrets(url)``: the password, its Basic token and the longer query values, for
  ``errors.register_secret`` (so they are removed even where a library prints them without the URL).
"""
from __future__ import annotations

import base64
import re
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

__all__ = ["endpoint", "split_credentials", "redact_url", "redact_urls", "url_secrets", "has_userinfo"]

# query parameters shown as they are: ones this package adds itself, never credentials
_PUBLIC_PARAMS = frozenset({"api-version"})
# a URL inside free text: scheme://, then anything up to whitespace, a quote or a closing bracket
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>)\]}]+")
_QUERY_VALUE = re.compile(r"([?&;][^=&#;\s]+=)([^&#;\s]*)")


def _netloc_without_userinfo(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def has_userinfo(url: str | None) -> bool:
    return bool(url) and "@" in urlsplit(url).netloc


def endpoint(base: str, path: str, params: dict[str, str] | None = None) -> str:
    """``base`` (userinfo and query kept) with ``path`` appended to its path and ``params`` added
    to its query."""
    parts = urlsplit(base)
    query = parts.query
    if params:
        query = "&".join(q for q in (query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, query, parts.fragment))


def split_credentials(url: str) -> tuple[str, str | None]:
    """(``url`` without ``user:password@``, the ``Basic ...`` Authorization value, or None)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("utf-8")).decode("ascii")
    clean = urlunsplit((parts.scheme, _netloc_without_userinfo(parts.netloc), parts.path, parts.query, parts.fragment))
    return clean, f"Basic {token}"


def redact_url(url: str) -> str:
    """``url`` with its userinfo replaced by ``***`` and every query value (but api-version) by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        netloc = "***@" + _netloc_without_userinfo(netloc)

    def value(match: re.Match) -> str:
        name = match.group(1)[1:-1]
        return match.group(0) if name.lower() in _PUBLIC_PARAMS else match.group(1) + "***"

    if "?" in tail:
        path, _, query = tail.partition("?")
        tail = path + _QUERY_VALUE.sub(value, "?" + query)
    return f"{scheme}://{netloc}{tail}"


def redact_urls(text: str) -> str:
    """Every URL in ``text`` through ``redact_url`` (a cheap no-op for text without ``://``)."""
    if not text or "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def url_secrets(url: str | None) -> list[str]:
    """What in ``url`` is secret, as it may be printed: the password (raw and decoded), its Basic
    token, and query values of 8 characters or more (shorter ones such as ``true`` would blank
    common words; inside a URL they are redacted anyway)."""
    if not url:
        return []
    parts = urlsplit(url)
    out: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        password = userinfo.partition(":")[2]
        out += [password, unquote(password), (split_credentials(url)[1] or "").removeprefix("Basic ")]
    for pair in parts.query.split("&"):
        name, _, raw = pair.partition("=")
        if unquote(name).lower() not in _PUBLIC_PARAMS and len(unquote(raw)) >= 8:
            out += [raw, unquote(raw.replace("+", " "))]
    return [s for s in dict.fromkeys(out) if s]
