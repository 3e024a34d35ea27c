"""Error answers of the simulator, in each provider's documented shape.

OpenAI: ``{"error": {"message", "type", "param", "code"}}``.
Anthropic: ``{"type": "error", "error": {"type", "message"}, "request_id"}``; the error type follows the
HTTP status (400 invalid_request_error, 401 authentication_error, 404 not_found_error, 429
rate_limit_error, 500 api_error, 529 overloaded_error).

One `ApiError` describes the failure once; ``body(anthropic, request_id)`` renders it for the endpoint
that was called, so a validation rule or fault is written once for both dialects.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .faults import go_duration

__all__ = ["ApiError", "openai_error", "anthropic_error", "anthropic_type_for", "fault_error", "BAD_GATEWAY_HTML"]

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                 429: "requests", 500: "server_error", 502: "server_error", 503: "server_error",
                 529: "overloaded_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 503: "api_error", 529: "overloaded_error"}


def anthropic_type_for(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def openai_error(status: int, message: str, kind: str | None = None, code: str | None = None,
                 param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``."""
    err = {"message": message, "type": kind or _OPENAI_TYPES.get(status, "server_error"), "param": param,
           "code": code}
    return json.dumps({"error": err}).encode()


def anthropic_error(status: int, message: str, request_id: str | None = None, kind: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` (the type is chosen by status)."""
    body: dict = {"type": "error", "error": {"type": kind or anthropic_type_for(status), "message": message}}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body).encode()


@dataclass
class ApiError:
    """One failed request: status and both dialects' wording.

    ``message`` is OpenAI's wording, ``anthropic_message`` Anthropic's (defaults to the same);
    ``kind``/``code``/``param`` fill OpenAI's fields (``kind`` None = chosen by status)."""

    status: int
    message: str
    anthropic_message: str | None = None
    kind: str | None = None
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    openai_body: bytes | None = None  # a verbatim body (e.g. LiteLLM's), used instead of the fields above

    def body(self, anthropic: bool, request_id: str | None = None) -> bytes:
        if anthropic:
            return anthropic_error(self.status, self.anthropic_message or self.message, request_id)
        if self.openai_body is not None:
            return self.openai_body
        return openai_error(self.status, self.message, self.kind, self.code, self.param)


# -- faults answered with an HTTP error (see faults.py for how a fault is picked) ---------------------
_CONTEXT_WINDOW = 128_000
BAD_GATEWAY_HTML = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
                    b"</body>\r\n</html>\r\n")


def fault_error(kind: str, anthropic: bool, ptoks: int, wait_s: float,
                wait_headers: dict[str, str]) -> ApiError | None:
    """The error a real provider answers for fault ``kind`` (None: not an HTTP-error fault)."""
    if kind == "429":
        return ApiError(429, f"Rate limit reached for requests. Please try again in {go_duration(wait_s)}.",
                        "This request would exceed your organization's rate limit. Please try again later.",
                        kind="requests", code="rate_limit_exceeded", headers=wait_headers)
    if kind == "insufficient_quota":
        if anthropic:  # Anthropic says it with a 400
            return ApiError(400, "", "Your credit balance is too low to access the Anthropic API. "
                                     "Please go to Plans & Billing to upgrade or purchase credits.")
        return ApiError(429, "You exceeded your current quota, please check your plan and billing details. For more "
                             "information on this error, read the docs: "
                             "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                        kind="insufficient_quota", code="insufficient_quota")
    if kind == "context_length":
        total = _CONTEXT_WINDOW + ptoks
        return ApiError(400, f"This model's maximum context length is {_CONTEXT_WINDOW} tokens. However, your "
                             f"messages resulted in {total} tokens. Please reduce the length of the messages.",
                        f"prompt is too long: {total} tokens > {_CONTEXT_WINDOW} maximum",
                        param="messages", code="context_length_exceeded")
    if kind == "400":
        return ApiError(400, "Invalid request (simulated).")
    if kind == "500":
        return ApiError(500, "The server had an error while processing your request. Sorry about that!",
                        "Internal server error")
    if kind == "503" or (kind == "overloaded" and not anthropic):
        return ApiError(503, "The engine is currently overloaded, please try again later.",
                        code="service_unavailable")
    if kind in ("529", "overloaded"):
        return ApiError(529, "Overloaded")
    return None
