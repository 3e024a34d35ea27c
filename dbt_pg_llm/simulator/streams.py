"""Server-sent event streams of the simulator, as the real APIs send them.

OpenAI: ``data: {chat.completion.chunk}`` lines, ``data: [DONE]`` at the end. Usage comes only when the
request set ``stream_options.include_usage``: then every chunk carries ``"usage": null`` and one extra
last chunk has ``"choices": []`` and the usage.
Anthropic: ``event: NAME`` + ``data: {...}`` pairs: message_start, content_block_start, ping,
content_block_delta (text_delta, or input_json_delta for a tool call), content_block_stop,
message_delta (stop_reason, usage), message_stop. A failure after the start is ``event: error``.

Each builder returns [(event bytes, completion tokens in it)] so per-token latency can pace them.
"""
from __future__ import annotations

import json
import time

from .wire import (Reply, Request, anthropic_content, anthropic_stop_reason, anthropic_usage, openai_logprobs,
                   openai_usage, writes_1h)

__all__ = ["make_sse_openai", "make_sse_anthropic", "anthropic_error_event", "openai_error_event"]


def _pieces(text: str) -> list[str]:
    return [text[i: i + 4] for i in range(0, len(text), 4)]


def _data(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _event(name: str, payload: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def make_sse_openai(req: Request, reply: Reply) -> list[tuple[bytes, int]]:
    base = {"id": f"chatcmpl-sim{req.seq:010x}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": req.model, "service_tier": "default", "system_fingerprint": "fp_simulator"}
    if req.include_usage:
        base["usage"] = None
    refused = reply.finish == "refusal"
    field = "refusal" if refused else "content"
    lps = None if refused else openai_logprobs(req, reply.text)
    out: list[tuple[bytes, int]] = []
    for index in range(req.n):
        first = {"role": "assistant", "content": None if refused else "", "refusal": "" if refused else None}
        out.append((_data({**base, "choices": [{"index": index, "delta": first, "logprobs": None,
                                                "finish_reason": None}]}), 0))
        for i, piece in enumerate(_pieces(reply.text)):
            lp = {"content": [lps[i]], "refusal": None} if lps else None
            out.append((_data({**base, "choices": [{"index": index, "delta": {field: piece}, "logprobs": lp,
                                                    "finish_reason": None}]}), 1))
        finish = "stop" if refused else reply.finish
        out.append((_data({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                "finish_reason": finish}]}), 0))
    if req.include_usage:
        out.append((_data({**base, "choices": [], "usage": openai_usage(reply.ptoks, reply.ctoks * req.n,
                                                                          reply.cached)}), 0))
    out.append((b"data: [DONE]\n\n", 0))
    return out


def message_start(req: Request, ptoks: int, read: int = 0, write: int = 0) -> bytes:
    message = {"id": f"msg_sim{req.seq:010x}", "type": "message", "role": "assistant", "model": req.model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": anthropic_usage(ptoks, 1, read, write, writes_1h(req))}
    return _event("message_start", {"type": "message_start", "message": message})


def make_sse_anthropic(req: Request, reply: Reply) -> list[tuple[bytes, int]]:
    out = [(message_start(req, reply.ptoks, reply.cached, reply.cache_write), 0)]
    for index, block in enumerate(anthropic_content(req, reply)):
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p}
                      for p in _pieces(json.dumps(block["input"], ensure_ascii=False))]
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        out.append((_event("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": start}), 0))
        if index == 0:
            out.append((_event("ping", {"type": "ping"}), 0))
        for delta in deltas:
            out.append((_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": delta}), 1))
        out.append((_event("content_block_stop", {"type": "content_block_stop", "index": index}), 0))
    usage = {"output_tokens": reply.ctoks, "input_tokens": reply.ptoks - reply.cached - reply.cache_write,
             "cache_creation_input_tokens": reply.cache_write, "cache_read_input_tokens": reply.cached}
    out.append((_event("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": anthropic_stop_reason(req, reply),
                                                   "stop_sequence": reply.stop_seq},
                                         "usage": usage}), 0))
    out.append((_event("message_stop", {"type": "message_stop"}), 0))
    return out


def anthropic_error_event(req: Request, kind: str, message: str, ptoks: int) -> bytes:
    """A stream that starts and then fails, as Anthropic's do (e.g. overloaded mid-stream)."""
    return message_start(req, ptoks) + _event("error", {"type": "error", "error": {"type": kind,
                                                                                        "message": message}})


def openai_error_event(body: bytes) -> bytes:
    return b"data: " + body + b"\n\n"
