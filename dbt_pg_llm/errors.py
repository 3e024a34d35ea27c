"""Error kinds and the exception tree of dbt_pg_llm.

Every failure the engine reports is one of these, so callers can catch at the level they care about:

    PgLlmError                 base of everything raised by this package
    ├── ConfigError            a configuration is invalid; ``problems`` lists every problem found,
    │                          each naming the key path and the fix
    ├── RegistryError          duplicate or unknown model name (the message lists the known names)
    └── ModelError             a call did not produce a valid output; ``kind`` says why:
            TIMEOUT            the provider did not answer in ``timeout_ms`` (recoverable)
            RATE_LIMITED       HTTP 429 without quota exhaustion (recoverable; ``retry_after`` set
                               from Retry-After / retry-after-ms / x-ratelimit-reset-* / anthropic-
                               ratelimit-*-reset / "try again in 3.2s" when the server said it); not
                               recoverable when the server asks for longer than
                               ``retry.max_retry_after_s``
            QUOTA              insufficient_quota / billing exhausted (not recoverable)
            API                5xx, 529 overloaded, connection refused/reset, malformed body
                               (recoverable), 401/403 auth errors, 404 unknown model (not recoverable)
            INVALID_INPUT      HTTP 400 / the request itself is wrong (not recoverable)
            INVALID_OUTPUT     the answer violated its response format: label not in the list,
                               JSON not matching the schema, empty text, content filtered
            REFUSED            the model declined to answer (OpenAI ``message.refusal``, Anthropic
                               ``stop_reason: "refusal"``); the provider's text is the message, the
                               tokens are paid; not recoverable (the same request gets the same no)
            INTERNAL           a bug or unexpected state inside the engine
            BUDGET             not sent: the request's worst-case cost does not fit in the active
                               spend limit (``llm.max_cost_usd_per_run``, see spend.py); nothing
                               was paid, and the key is requested again on the next run (not
                               recoverable, no failover, not counted by the circuit breaker)
            CLAIM_LOST         not sent: another run took over the key's claim while this one was
                               paused or cut off from Postgres (lease.py); that run answers it.
                               Nothing was paid; handled like BUDGET (no retry, no failover)

``recoverable`` tells the retry layer (``RetryPolicy``) whether the same request may succeed later.
Messages never contain API keys nor URL credentials: ``redact()`` is applied to every message
built from a response.
"""
from __future__ import annotations

import enum
import re
from typing import Iterable

from .urls import redact_urls

__all__ = [
    "ErrorKind",
    "PgLlmError",
    "ConfigError",
    "RegistryError",
    "ModelError",
    "redact",
]


class ErrorKind(str, enum.Enum):
    """Why a call failed. The value is what the audit tables store."""

    NONE = "none"
    TIMEOUT = "timeout"
    API = "api"
    QUOTA = "quota"
    RATE_LIMITED = "rate_limited"
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    REFUSED = "refused"
    INTERNAL = "internal"
    BUDGET = "budget"
    CLAIM_LOST = "claim_lost"

    def __str__(self) -> str:  # so f"{kind}" gives "timeout", not "ErrorKind.TIMEOUT"
        return self.value


# Default recoverability per kind; API errors are refined per HTTP status by the providers.
_RECOVERABLE_BY_DEFAULT = {
    ErrorKind.NONE: False,
    ErrorKind.TIMEOUT: True,
    ErrorKind.API: True,
    ErrorKind.QUOTA: False,
    ErrorKind.RATE_LIMITED: True,
    ErrorKind.INVALID_INPUT: False,
    ErrorKind.INVALID_OUTPUT: False,
    ErrorKind.REFUSED: False,
    ErrorKind.INTERNAL: False,
    ErrorKind.BUDGET: False,
    ErrorKind.CLAIM_LOST: False,
}

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{6,}"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
]
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so ``redact`` removes it from any text, wherever it appears."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove API keys (registered ones, given ones, and things that look like keys) and URL
    credentials (``user:password@``, query values: ``urls.redact_urls``) from text."""
    if not text:
        return text
    for secret in list(_known_secrets) + [s for s in secrets if s]:
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***", text)
    # a URL's user:password@ and query values (an api_url may carry a key there), in any library's text
    return redact_urls(text)


class PgLlmError(Exception):
    """Base class of every exception raised by dbt_pg_llm."""


class ConfigError(PgLlmError, ValueError):
    """A configuration is invalid. ``problems`` holds one line per problem: key path, what is wrong, the fix."""

    def __init__(self, problems: list[str], context: str = "configuration"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(redact(f"invalid {context} ({len(self.problems)} problem(s)):\n{lines}"))


class RegistryError(PgLlmError, KeyError):
    """Duplicate or unknown model name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelError(PgLlmError):
    """A call failed. See the module docstring for the meaning of each ``kind``."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        recoverable: bool | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        model: str | None = None,
        unsent: bool = False,
    ):
        self.kind = ErrorKind(kind)
        self.message = redact(message)
        self.recoverable = _RECOVERABLE_BY_DEFAULT[self.kind] if recoverable is None else recoverable
        self.http_status = http_status
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said
        self.model = model
        # True: the request provably never reached the server (no connection could be opened), so
        # nothing can have been billed: its spend reservation is refunded in full (spend.py)
        self.unsent = unsent
        super().__init__(f"{self.kind.value}: {self.message}")

    def __reduce__(self):  # keep kind & co. when pickled across processes
        return (
            _rebuild_model_error,
            (self.kind, self.message, self.recoverable, self.http_status, self.retry_after, self.model, self.unsent),
        )


def _rebuild_model_error(kind, message, recoverable, http_status, retry_after, model, unsent=False):
    return ModelError(
        kind, message, recoverable=recoverable, http_status=http_status, retry_after=retry_after, model=model,
        unsent=unsent,
    )
