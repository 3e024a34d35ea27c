"""Wire formats of the simulator: the parsed request, and the answer bodies (OpenAI and Anthropic).

The request is validated first (validate.py); ``parse_request`` only reads a valid body. Streams are
in streams.py, error bodies in errors.py.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from . import answers as A
from .prompt_cache import CachePoint, cache_ttl_s

__all__ = ["Request", "Reply", "parse_request", "openai_body", "anthropic_body", "openai_usage", "anthropic_usage",
           "writes_1h",
           "REFUSAL_TEXT"]

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(slots=True)
class Request:
    model: str
    system: str
    user: str
    contents: list  # text of every message (Anthropic: the system prompt counts as one)
    max_tokens: int | None
    stop: tuple
    stream: bool
    include_usage: bool  # OpenAI stream_options.include_usage
    logprobs: bool
    top_logprobs: int
    response_format: str | None  # the JSON format asked for, as canonical JSON text (OpenAI shape)
    n: int = 1
    tool_name: str | None = None  # Anthropic: the tool the model is made to call (tool_choice tool/any)
    cache_points: tuple = ()  # Anthropic: the cache_control breakpoints (prompt_cache.CachePoint)
    seq: int = 0  # the server's request number: ids of the answer (chatcmpl-…, msg_…, toolu_…)
    mistaken: bool = False  # the answer is a model_error_rates mistake: its logprobs are lower (answers.py)


@dataclass(slots=True)
class Reply:
    """What the simulated model answers, before it is put on the wire.

    finish: "stop" | "length" | "content_filter" | "refusal"; ctoks are per choice."""

    text: str
    finish: str
    stop_seq: str | None
    ptoks: int  # every input token, cache reads and writes included
    ctoks: int
    cached: int = 0  # of ptoks: read from the prompt cache (prompt_cache.py)
    cache_write: int = 0  # of ptoks: written to it (Anthropic)


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


def _json_format(name: str, schema: dict) -> str:
    """An OpenAI-shaped json_schema format as canonical text: the answer key of a JSON request, so a
    forced Anthropic tool, Anthropic's output_config and OpenAI's response_format agree on one schema."""
    return json.dumps({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}, sort_keys=True)


def _output_config_format(body: dict) -> str | None:
    """Anthropic structured outputs: ``output_config: {"format": {"type": "json_schema", "schema": ...}}``."""
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return _json_format("output", fmt["schema"])
    return None


def _forced_tool(body: dict) -> tuple[str | None, str | None]:
    """Anthropic ``tool_choice`` tool/any: (tool name, its input_schema as an OpenAI json_schema format)."""
    choice = body.get("tool_choice") or {}
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)]
    if choice.get("type") == "tool":
        tools = [t for t in tools if t.get("name") == choice.get("name")]
    elif choice.get("type") != "any":
        return None, None
    if not tools:
        return None, None
    tool = tools[0]
    return tool["name"], _json_format(tool["name"], tool["input_schema"])


def parse_request(body: dict, anthropic: bool) -> Request:
    """Read a request that validate.check_request accepted."""
    systems: list[str] = []
    contents: list[str] = []
    user = ""
    if anthropic:
        system = _text(body.get("system"))
        if system:
            systems.append(system)
            contents.append(system)
    for m in body["messages"]:
        text = _text(m.get("content"))
        contents.append(text)
        if m.get("role") == "user":
            user = text
        elif m.get("role") in ("system", "developer"):
            systems.append(text)
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not anthropic:
        max_tokens = body.get("max_completion_tokens")
    stop = body.get("stop_sequences" if anthropic else "stop")
    if isinstance(stop, str):
        stop = (stop,)
    stop = tuple(s for s in stop or () if isinstance(s, str) and s)
    tool_name, rf_text = _forced_tool(body) if anthropic else (None, None)
    points = _cache_points(body) if anthropic else ()
    if anthropic and tool_name is None:
        rf_text = _output_config_format(body)
    rf = None if anthropic else body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object"):
        rf_text = json.dumps(rf, sort_keys=True)
    return Request(
        model=body["model"],
        system="\n".join(systems),
        user=user,
        contents=contents,
        max_tokens=max_tokens,
        stop=stop,
        stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        logprobs=bool(body.get("logprobs")),
        top_logprobs=body.get("top_logprobs") or 0,
        response_format=rf_text,
        n=body.get("n") or 1,
        tool_name=tool_name,
        cache_points=points,
    )


def _cache_points(body: dict) -> tuple:
    """Anthropic's cache breakpoints in the system prompt: each caches the tools and the system text
    up to and including its block (its tokens as the simulator counts the system message)."""
    system = body.get("system")
    if not isinstance(system, list):
        return ()
    h = hashlib.sha256(json.dumps(body.get("tools") or [], sort_keys=True).encode())
    points, texts = [], []
    for block in system:
        text = _text([block])
        texts.append(text)
        h.update(b"\x00" + text.encode("utf-8", "surrogatepass"))
        control = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(control, dict):
            prefix = "\n".join(texts)
            points.append(CachePoint(h.copy().digest(), A.prompt_tokens([prefix]), cache_ttl_s(control.get("ttl"))))
    return tuple(points)


# -- usage -----------------------------------------------------------------------------------------
def openai_usage(ptoks: int, ctoks: int, cached: int = 0) -> dict:
    """OpenAI's usage: ``prompt_tokens`` includes ``cached_tokens``."""
    return {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def anthropic_usage(ptoks: int, ctoks: int, read: int = 0, write: int = 0, write_1h: bool = False) -> dict:
    """Anthropic's usage: ``input_tokens`` excludes the cache reads and writes (``ptoks`` counts all)."""
    return {"input_tokens": ptoks - read - write, "output_tokens": ctoks, "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": 0 if write_1h else write,
                               "ephemeral_1h_input_tokens": write if write_1h else 0},
            "service_tier": "standard"}


# -- answers ---------------------------------------------------------------------------------------
def openai_logprobs(req: Request, text: str) -> list[dict] | None:
    return A.logprobs_for(text, req.top_logprobs, req.model + "\x00" + req.user, req.mistaken) \
        if req.logprobs else None


def openai_body(req: Request, reply: Reply) -> dict:
    refused = reply.finish == "refusal"
    message = {"role": "assistant", "content": None if refused else reply.text,
               "refusal": reply.text if refused else None, "annotations": []}
    lps = None if refused else openai_logprobs(req, reply.text)
    choice = {"message": message, "logprobs": {"content": lps, "refusal": None} if lps is not None else None,
              "finish_reason": "stop" if refused else reply.finish}
    return {
        "id": f"chatcmpl-sim{req.seq:010x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [{"index": i, **choice} for i in range(req.n)],
        "usage": openai_usage(reply.ptoks, reply.ctoks * req.n, reply.cached),
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }


_ANTH_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "refusal": "refusal"}


def anthropic_stop_reason(req: Request, reply: Reply) -> str:
    if reply.stop_seq is not None:
        return "stop_sequence"
    if req.tool_name and reply.finish == "stop":
        return "tool_use"
    return _ANTH_STOP[reply.finish]


def tool_input(reply: Reply) -> dict:
    """The forced tool call's input: the JSON answer, or ``{}`` when max_tokens cut it short."""
    try:
        value = json.loads(reply.text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def anthropic_content(req: Request, reply: Reply) -> list[dict]:
    if reply.finish == "content_filter":
        return []
    if req.tool_name and reply.finish != "refusal":
        return [{"type": "tool_use", "id": f"toolu_sim{req.seq:010x}", "name": req.tool_name,
                 "input": tool_input(reply)}]
    return [{"type": "text", "text": reply.text}]


def writes_1h(req: Request) -> bool:
    """Whether the request's cache writes are 1-hour ones (its last breakpoint asked for ``ttl: 1h``)."""
    return bool(req.cache_points) and req.cache_points[-1].ttl_s > 300.0


def anthropic_body(req: Request, reply: Reply) -> dict:
    return {
        "id": f"msg_sim{req.seq:010x}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": anthropic_content(req, reply),
        "stop_reason": anthropic_stop_reason(req, reply),
        "stop_sequence": reply.stop_seq,
        "usage": anthropic_usage(reply.ptoks, reply.ctoks, reply.cached, reply.cache_write, writes_1h(req)),
    }
