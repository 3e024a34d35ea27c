"""Wire formats of the simulator: request parsing, error bodies, SSE streams (OpenAI and Anthropic)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from . import answers as A

__all__ = ["Request", "parse_request", "openai_error", "anthropic_error", "openai_body", "anthropic_body",
           "make_sse_openai", "make_sse_anthropic"]


@dataclass(slots=True)
class Request:
    model: str
    system: str
    user: str
    contents: list  # text of every message (Anthropic: the system prompt counts as one)
    max_tokens: int | None
    stop: tuple
    stream: bool
    logprobs: bool
    top_logprobs: int
    response_format: str | None  # OpenAI response_format as canonical JSON text


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def parse_request(body: dict, anthropic: bool) -> "Request | str":
    """The request, or a message saying why it is invalid (answered with HTTP 400)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty array"
    systems: list[str] = []
    contents: list[str] = []
    user = ""
    if anthropic:
        system = _text(body.get("system"))
        if system:
            systems.append(system)
            contents.append(system)
    for m in messages:
        if not isinstance(m, dict):
            return "each message must be an object with 'role' and 'content'"
        text = _text(m.get("content"))
        role = m.get("role")
        contents.append(text)
        if role == "user":
            user = text
        elif role in ("system", "developer") and not anthropic:
            systems.append(text)
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not anthropic:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        return f"'max_tokens' must be a positive integer, got {max_tokens!r}"
    stop = body.get("stop_sequences" if anthropic else "stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list):
        stop = tuple(s for s in stop if isinstance(s, str) and s)
    else:
        return "'stop' must be a string or an array of strings"
    rf = None if anthropic else body.get("response_format")
    rf_text = None
    if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object"):
        rf_text = json.dumps(rf, sort_keys=True)
    top = body.get("top_logprobs") or 0
    if not isinstance(top, int) or not 0 <= top <= 20:
        return "'top_logprobs' must be an integer between 0 and 20"
    return Request(
        model=str(body.get("model") or "sim-small"),
        system="\n".join(systems),
        user=user,
        contents=contents,
        max_tokens=max_tokens,
        stop=stop,
        stream=bool(body.get("stream")),
        logprobs=bool(body.get("logprobs")),
        top_logprobs=top,
        response_format=rf_text,
    )


# -- errors ----------------------------------------------------------------------------------------
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests",
                 500: "server_error", 503: "server_error", 529: "overloaded_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                    500: "api_error", 503: "api_error", 529: "overloaded_error"}


def openai_error(status: int, message: str, kind: str | None = None, code: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``."""
    err = {"message": message, "type": kind or _OPENAI_TYPES.get(status, "server_error"), "param": None, "code": code}
    return json.dumps({"error": err}).encode()


def anthropic_error(status: int, message: str, kind: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}`` (the Anthropic type is chosen by status)."""
    return json.dumps({"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"),
                                                  "message": message}}).encode()


# -- answers ---------------------------------------------------------------------------------------
_ANTH_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}


def openai_body(req: Request, answer: str, finish: str, ptoks: int, ctoks: int, n: int) -> dict:
    lp = {"content": A.logprobs_for(answer, req.top_logprobs, req.model + "\x00" + req.user), "refusal": None} if req.logprobs else None
    return {
        "id": f"chatcmpl-sim{n:010x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer, "refusal": None},
            "logprobs": lp,
            "finish_reason": finish,
        }],
        "usage": {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks},
        "system_fingerprint": "fp_simulator",
    }


def anthropic_body(req: Request, answer: str, finish: str, stop_seq: str | None,
                    ptoks: int, ctoks: int, n: int) -> dict:
    return {
        "id": f"msg_sim{n:010x}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [{"type": "text", "text": answer}] if finish != "content_filter" else [],
        "stop_reason": "stop_sequence" if stop_seq is not None else _ANTH_STOP[finish],
        "stop_sequence": stop_seq,
        "usage": {"input_tokens": ptoks, "output_tokens": ctoks},
    }


# -- streams ---------------------------------------------------------------------------------------
def _tokens(answer: str) -> list[str]:
    return [answer[i: i + 4] for i in range(0, len(answer), 4)]


def make_sse_openai(req: Request, answer: str, finish: str, stop_seq, ptoks: int, ctoks: int,
                    n: int) -> list[tuple[bytes, int]]:
    """(event bytes, tokens in it) for each chunk; the last chunk has finish_reason and usage."""
    base = {"id": f"chatcmpl-sim{n:010x}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": req.model, "system_fingerprint": "fp_simulator"}
    lps = A.logprobs_for(answer, req.top_logprobs, req.model + "\x00" + req.user) if req.logprobs else None

    def ev(choice: dict, usage=None) -> bytes:
        payload = {**base, "choices": [choice]}
        if usage is not None:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    out = [(ev({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}), 0)]
    for i, tok in enumerate(_tokens(answer)):
        lp = {"content": [lps[i]], "refusal": None} if lps else None
        out.append((ev({"index": 0, "delta": {"content": tok}, "logprobs": lp, "finish_reason": None}), 1))
    usage = {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks}
    out.append((ev({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}, usage), 0))
    out.append((b"data: [DONE]\n\n", 0))
    return out


def make_sse_anthropic(req: Request, answer: str, finish: str, stop_seq, ptoks: int, ctoks: int,
                       n: int) -> list[tuple[bytes, int]]:
    """Anthropic's event stream: message_start, content_block_*, message_delta (usage), message_stop."""

    def ev(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: ".encode() + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

    message = {"id": f"msg_sim{n:010x}", "type": "message", "role": "assistant", "model": req.model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": ptoks, "output_tokens": 1}}
    out = [(ev("message_start", {"type": "message_start", "message": message}), 0),
           (ev("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}), 0)]
    for tok in _tokens(answer):
        out.append((ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": tok}}), 1))
    out.append((ev("content_block_stop", {"type": "content_block_stop", "index": 0}), 0))
    reason = "stop_sequence" if stop_seq is not None else _ANTH_STOP[finish]
    out.append((ev("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": reason, "stop_sequence": stop_seq},
                                     "usage": {"output_tokens": ctoks}}), 0))
    out.append((ev("message_stop", {"type": "message_stop"}), 0))
    return out
