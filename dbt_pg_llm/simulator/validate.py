"""Request validation as the real APIs do it, with their wording (so a client's error handling is tested).

OpenAI chat completions: unknown arguments, a missing or unknown ``model``, ``temperature`` outside
0..2, ``top_logprobs`` without ``logprobs``, ``stream_options`` without ``stream``, bad
``response_format`` (json_schema without a name; ``strict`` schemas that OpenAI would refuse;
json_object without the word "json" in the messages).
Anthropic messages: extra inputs, missing ``model``/``max_tokens``, ``role: system`` inside
``messages``, ``temperature`` outside 0..1, a forced tool that is not in ``tools``.
``reject_params`` mimics servers that refuse parameters they do not support (LiteLLM in front of a
backend without them, several OpenAI-compatible servers): 400 naming the parameter.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import ApiError

__all__ = ["check_request", "strict_schema_problem", "rejected_param", "model_not_found", "OPENAI_PARAMS",
           "ANTHROPIC_PARAMS"]

OPENAI_PARAMS = frozenset((
    "model messages temperature top_p n stream stream_options stop max_tokens max_completion_tokens "
    "presence_penalty frequency_penalty logit_bias logprobs top_logprobs user response_format seed tools "
    "tool_choice parallel_tool_calls service_tier store metadata modalities audio prediction "
    "reasoning_effort web_search_options functions function_call safety_identifier prompt_cache_key "
    "verbosity").split())
ANTHROPIC_PARAMS = frozenset((
    "model messages max_tokens system stop_sequences stream temperature top_p top_k tools tool_choice "
    "metadata thinking service_tier container mcp_servers output_config cache_control context_management "
    "diagnostics inference_geo speed").split())
_OPENAI_ROLES = ("system", "assistant", "user", "function", "tool", "developer")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_error(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> ApiError | None:
    """OpenAI: "Invalid 'x': decimal above maximum value. ..."; Anthropic: "x: Input should be ..."."""
    kind = "integer" if integer else "decimal"
    if not (_integer(value) if integer else _number(value)):
        return ApiError(400, f"Invalid type for '{name}': expected {'an integer' if integer else 'a decimal'}, "
                             f"but got {type(value).__name__} instead.",
                        f"{name}: Input should be a valid {'integer' if integer else 'number'}",
                        param=name, code="invalid_type")
    if value > hi:
        return ApiError(400, f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi:g}, "
                             f"but got {value:g} instead.", f"{name}: Input should be less than or equal to {hi:g}",
                        param=name, code=f"{kind}_above_max_value")
    if value < lo:
        return ApiError(400, f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo:g}, "
                             f"but got {value:g} instead.", f"{name}: Input should be greater than or equal to {lo:g}",
                        param=name, code=f"{kind}_below_min_value")
    return None


def rejected_param(name: str, model: str, anthropic: bool) -> ApiError:
    """A server that does not support ``name``: LiteLLM's UnsupportedParamsError body (OpenAI dialect),
    Anthropic's extra-input error (Anthropic dialect)."""
    message = (f"litellm.UnsupportedParamsError: {'anthropic' if anthropic else 'openai'} does not support "
               f"parameters: ['{name}'], for model={model}. To drop these, set `litellm.drop_params=True` or "
               f"for proxy:\n\n`litellm_settings:\n drop_params: true`\n")
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": name,
                                 "code": "400"}}).encode()
    return ApiError(400, message, f"{name}: Extra inputs are not permitted", param=name, openai_body=body)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    f"model: {model}", code="model_not_found")


def check_request(body: Any, anthropic: bool, models: tuple[str, ...] | None = None,
                  reject_params: tuple[str, ...] = ()) -> ApiError | None:
    """None when the request is acceptable, else the error a real API would answer."""
    if not isinstance(body, dict):
        return ApiError(400, "We could not parse the JSON body of your request. The API expects a JSON payload.",
                        "There was an error parsing the body of your request: the body must be a JSON object")
    known = ANTHROPIC_PARAMS if anthropic else OPENAI_PARAMS
    for name in body:
        if name not in known:
            return ApiError(400, f"Unrecognized request argument supplied: {name}",
                            f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if not model or not isinstance(model, str):
        return ApiError(400, "you must provide a model parameter", "model: Field required")
    if models is not None and model not in models:
        return model_not_found(model)
    for name in reject_params:
        if name in body:
            return rejected_param(name, model, anthropic)
    problem = _check_messages(body.get("messages"), anthropic)
    if problem is None:
        problem = (_check_anthropic if anthropic else _check_openai)(body)
    return problem


def _check_messages(messages: Any, anthropic: bool) -> ApiError | None:
    if messages is None:
        return ApiError(400, "Missing required parameter: 'messages'.", "messages: Field required",
                        param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        return ApiError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
                             "an empty array instead.", "messages: at least one message is required",
                        param="messages", code="empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            return ApiError(400, f"Missing required parameter: 'messages[{i}].role'.",
                            f"messages.{i}.role: Field required", param=f"messages[{i}].role",
                            code="missing_required_parameter")
        role = m["role"]
        if anthropic and role == "system":
            return ApiError(400, "", 'messages: Unexpected role "system". The Messages API accepts a top-level '
                                     '`system` parameter, not "system" as an input message role.')
        allowed = ("user", "assistant") if anthropic else _OPENAI_ROLES
        if role not in allowed:
            return ApiError(400, f"Invalid value: '{role}'. Supported values are: "
                                 + ", ".join(f"'{r}'" for r in allowed) + ".",
                            f"messages.{i}.role: Input should be 'user' or 'assistant'",
                            param=f"messages[{i}].role", code="invalid_value")
    return None


def _check_openai(body: dict) -> ApiError | None:
    checks = [("temperature", 0, 2, False), ("top_p", 0, 1, False), ("n", 1, 128, True),
              ("top_logprobs", 0, 20, True), ("max_tokens", 1, 10**7, True), ("max_completion_tokens", 1, 10**7, True)]
    for name, lo, hi, integer in checks:
        if body.get(name) is not None:
            problem = _range_error(name, body[name], lo, hi, integer)
            if problem:
                return problem
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        return ApiError(400, f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
                             f"array with length {len(stop)} instead.", param="stop", code="array_above_max_length")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        return ApiError(400, "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.",
                        param="top_logprobs")
    if body.get("stream_options") is not None and not body.get("stream"):
        return ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        param="stream_options")
    return _check_response_format(body.get("response_format"), body.get("messages") or [])


def _check_response_format(rf: Any, messages: list) -> ApiError | None:
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and "
                             "'json_schema'.", param="response_format.type", code="invalid_value")
    if kind == "json_object":
        text = json.dumps([m.get("content") for m in messages]).lower()
        if "json" not in text:
            return ApiError(400, "'messages' must contain the word 'json' in some form, to use 'response_format' "
                                 "of type 'json_object'.", param="messages")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            return ApiError(400, "Missing required parameter: 'response_format.json_schema'.",
                            param="response_format.json_schema", code="missing_required_parameter")
        if not spec.get("name"):
            return ApiError(400, "Missing required parameter: 'response_format.json_schema.name'.",
                            param="response_format.json_schema.name", code="missing_required_parameter")
        if spec.get("strict"):
            where = strict_schema_problem(spec.get("schema"))
            if where:
                return ApiError(400, f"Invalid schema for response_format '{spec['name']}': {where}",
                                param="response_format", code="invalid_json_schema")
    return None


def strict_schema_problem(schema: Any, context: tuple = ()) -> str | None:
    """What OpenAI's strict structured outputs refuse: an object without ``additionalProperties: false``
    or whose ``required`` does not list every property; the root must be an object."""
    if not context and not (isinstance(schema, dict) and schema.get("type") == "object"):
        return "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"%s\"'." % (
            schema.get("type") if isinstance(schema, dict) else type(schema).__name__)
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        missing = [p for p in props if p not in (schema.get("required") or [])]
        if missing:
            return (f"In context={context}, 'required' is required to be supplied and to be an array including "
                    f"every key in properties. Missing '{missing[0]}'.")
        for name, sub in props.items():
            problem = strict_schema_problem(sub, context + ("properties", name))
            if problem:
                return problem
    for key in ("items",):
        if isinstance(schema.get(key), dict):
            problem = strict_schema_problem(schema[key], context + (key,))
            if problem:
                return problem
    for key in ("anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key) or []):
            problem = strict_schema_problem(sub, context + (key, i))
            if problem:
                return problem
    for defs in ("$defs", "definitions"):
        for name, sub in (schema.get(defs) or {}).items():
            problem = strict_schema_problem(sub, context + (defs, name))
            if problem:
                return problem
    return None


def _check_anthropic(body: dict) -> ApiError | None:
    if body.get("max_tokens") is None:
        return ApiError(400, "", "max_tokens: Field required")
    for name, lo, hi, integer in (("max_tokens", 1, 10**7, True), ("temperature", 0, 1, False),
                                  ("top_p", 0, 1, False), ("top_k", 0, 10**6, True)):
        if body.get(name) is not None:
            problem = _range_error(name, body[name], lo, hi, integer)
            if problem:
                return problem
    problem = _check_cache_control(body)
    if problem is not None:
        return problem
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return ApiError(400, "", "tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not tool.get("name"):
                return ApiError(400, "", f"tools.{i}.name: Field required")
            if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
                return ApiError(400, "", f"tools.{i}.custom.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            return ApiError(400, "", "tool_choice: Input tag '%s' found using 'type' does not match any of the "
                                     "expected tags: 'auto', 'any', 'tool', 'none'" % kind)
        names = [t.get("name") for t in tools or []]
        if kind in ("any", "tool") and not names:
            return ApiError(400, "", "tool_choice: tool_choice may only be specified while providing tools.")
        if kind == "tool" and choice.get("name") not in names:
            return ApiError(400, "", f"tool_choice: Tool '{choice.get('name')}' not found in 'tools'.")
    return None


def _check_cache_control(body: dict) -> ApiError | None:
    """Anthropic's ``system`` (text or a list of text blocks) and its ``cache_control`` breakpoints:
    ``{"type": "ephemeral"}`` with an optional ``ttl`` of "5m" or "1h", at most 4 per request."""
    system = body.get("system")
    blocks: list[tuple[str, Any]] = []
    if isinstance(system, list):
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                return ApiError(400, "", f"system.{i}: Input should be a valid text block "
                                         "with type 'text' and a text")
            blocks.append((f"system.{i}", block))
    elif system is not None and not isinstance(system, str):
        return ApiError(400, "", "system: Input should be a valid string or a list of text blocks")
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict):
            blocks.append((f"tools.{i}", tool))
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, dict):
                blocks.append((f"messages.{i}.content.{j}", block))
    marked = 0
    for where, block in blocks:
        control = block.get("cache_control")
        if control is None:
            continue
        marked += 1
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            return ApiError(400, "", f"{where}.cache_control.type: Input should be 'ephemeral'")
        extra = sorted(set(control) - {"type", "ttl"})
        if extra:
            return ApiError(400, "", f"{where}.cache_control.{extra[0]}: Extra inputs are not permitted")
        if control.get("ttl") not in (None, "5m", "1h"):
            return ApiError(400, "", f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    if marked > 4:
        return ApiError(400, "", f"A maximum of 4 blocks with cache_control may be provided. Found {marked}.")
    return None
