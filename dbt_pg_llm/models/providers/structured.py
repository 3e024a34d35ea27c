"""The JSON schema a provider is given for structured output, and how its answer maps back.

Providers want an object at the root (OpenAI json_schema, Anthropic tool ``input_schema``), so a
non-object schema is wrapped as ``{"value": <schema>}`` and labels become
``{"label": {"enum": [...]}}``; ``answer_text`` unwraps the provider's JSON back to the text the
response format validates (the label itself, or the JSON of the value). The engine validates the
answer against the original schema in every case: the provider's schema only steers the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..model_io import ResponseFormat

__all__ = ["StructuredSchema", "structured_schema", "answer_text", "TOOL_NAME"]

TOOL_NAME = "answer"


@dataclass(frozen=True)
class StructuredSchema:
    schema: dict
    wrapped_in: str | None = None  # the property holding the real answer, when wrapped
    is_label: bool = False


def structured_schema(fmt: ResponseFormat, *, labels_as_enum: bool) -> StructuredSchema | None:
    """The schema to send for ``fmt``; None for free text (and for labels unless ``labels_as_enum``)."""
    if fmt.type == "labels":
        if not labels_as_enum:
            return None
        return StructuredSchema({"type": "object", "properties": {"label": {"type": "string", "enum": list(fmt.labels)}},
                                 "required": ["label"], "additionalProperties": False}, "label", is_label=True)
    if fmt.type != "json":
        return None
    schema = fmt.json_schema or {"type": "object"}
    if schema.get("type") == "object" or ("type" not in schema and "properties" in schema):
        return StructuredSchema(schema)
    return StructuredSchema({"type": "object", "properties": {"value": schema}, "required": ["value"],
                             "additionalProperties": False}, "value")


def answer_text(structured: StructuredSchema | None, answer: Any) -> str | None:
    """The answer as the response format expects it: ``answer`` is the provider's JSON text (OpenAI)
    or the parsed object (Anthropic tool input). Unusable answers are passed through for validation
    to reject with a precise message."""
    if isinstance(answer, str):
        if structured is None or structured.wrapped_in is None:
            return answer
        try:
            answer = json.loads(answer)
        except ValueError:
            return answer
    if structured is not None and structured.wrapped_in is not None and isinstance(answer, dict) \
            and structured.wrapped_in in answer:
        answer = answer[structured.wrapped_in]
        if structured.is_label and isinstance(answer, str):
            return answer
    return json.dumps(answer, ensure_ascii=False)
