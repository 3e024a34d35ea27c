"""Optional request features a server may not support, and what each model has learnt about them.

Two features vary between OpenAI-compatible servers (and LiteLLM in front of Anthropic):

* ``logprobs`` (the confidence of an answer): per model ``logprobs: auto | always | never``.
  ``auto`` asks for them only when the call wants a confidence, and stops asking (for this model,
  for the rest of the process) after a 400 naming ``logprobs`` / ``top_logprobs``.
* structured output: per model ``structured_output: auto | json_schema | json_object | tool | prompt``.
  ``auto`` starts with the provider's best method (OpenAI: ``json_schema``, Anthropic: a forced
  ``tool`` call) and steps down (json_schema -> json_object -> prompt, tool -> prompt) after a 400
  naming the parameter. The answer is validated against the schema whatever the method.

``ModelFeatures.adapt(error)`` is how a Provider re-sends one request without the rejected
feature: it is a change of the request, not a retry (the 400 is free and the next request differs),
so it happens inside the provider's single attempt, bounded by the number of features it can drop.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from ...errors import ModelError

__all__ = ["ModelFeatures", "STRUCTURED_STEPS", "strict_schema_ok"]

# (the modes a config may name are validated in config.py: LOGPROBS_MODES, STRUCTURED_MODES)
# what ``auto`` starts with, and the step down after a 400 naming the method's parameter
STRUCTURED_STEPS = {"openai": ("json_schema", "json_object", "prompt"), "anthropic": ("tool", "prompt")}
_NAMES = {"logprobs": ("logprobs", "top_logprobs"),
          # llama.cpp's server: 400 "JSON schema conversion failed: ..." (a schema its grammar can't express)
          "json_schema": ("response_format", "json_schema", "json schema"),
          "json_object": ("response_format", "json_object"),
          "tool": ("tool_choice", "tools")}


def _names_parameter(error: ModelError, words: tuple[str, ...]) -> bool:
    if error.http_status not in (400, 422):
        return False
    text = (error.message or "").lower()
    return any(word in text for word in words)


@dataclass
class ModelFeatures:
    """What one model's server accepts, as learnt so far (shared by every call of the model)."""

    logprobs_mode: str = "auto"
    structured_mode: str = "auto"
    family: str = "openai"  # "openai" (OpenAI, Azure, compatible servers) or "anthropic"
    logprobs_rejected: bool = False
    structured_step: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def send_logprobs(self, wanted: bool) -> bool:
        if self.logprobs_mode == "never":
            return False
        if self.logprobs_mode == "always":
            return True
        return wanted and not self.logprobs_rejected

    @property
    def structured_method(self) -> str:
        if self.structured_mode != "auto":
            return self.structured_mode
        steps = STRUCTURED_STEPS[self.family]
        return steps[min(self.structured_step, len(steps) - 1)]

    def adapt(self, error: ModelError, sent: dict) -> str | None:
        """After a 400 naming a feature this request used (``sent``: feature -> True), stop using it
        for this model and return its name; None when the error is not about one (raise it)."""
        with self._lock:
            if sent.get("logprobs") and self.logprobs_mode == "auto" \
                    and _names_parameter(error, _NAMES["logprobs"]):
                self.logprobs_rejected = True
                return "logprobs"
            method = sent.get("structured")
            if method and method != "prompt" and self.structured_mode == "auto" \
                    and _names_parameter(error, _NAMES[method]):
                steps = STRUCTURED_STEPS[self.family]
                if method == self.structured_method and self.structured_step < len(steps) - 1:
                    self.structured_step += 1
                return method
        return None


def strict_schema_ok(schema) -> bool:
    """OpenAI's strict structured outputs accept a schema only when every object lists all its
    properties as required and sets ``additionalProperties: false``; strict is used only then."""
    if isinstance(schema, list):
        return all(strict_schema_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(props):
            return False
    children = list((schema.get("properties") or {}).values())
    for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
        if key in schema:
            children.append(schema[key])
    for key in ("$defs", "definitions"):
        children.extend((schema.get(key) or {}).values())
    return all(strict_schema_ok(child) for child in children)
