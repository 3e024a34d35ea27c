"""What goes into a model call and what comes out: ModelInput, ResponseFormat, ModelOutput, TokenUsage."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError, ErrorKind, ModelError

__all__ = ["ResponseFormat", "ModelInput", "TokenUsage", "ModelOutput", "label_problems"]

FORMAT_TYPES = ("text", "labels", "json")


def label_problems(labels: Any, path: str = "labels") -> list[str]:
    """What is wrong with a list of classify labels (empty when usable), each naming ``path`` and the fix.

    Labels are distinct, non-empty text without NUL and without surrounding blanks (an answer is
    compared after stripping blanks, so such a label could never be answered). Nothing is coerced:
    ``['a', 3]`` is an error, not ``'3'`` (YAML turns ``yes`` / ``1`` into a boolean / number)."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)) or not labels:
        return [f"{path}: a non-empty list of labels is needed, e.g. labels: [positive, negative, neutral]"]
    problems = []
    seen: set[str] = set()
    for i, label in enumerate(labels):
        where = f"{path}[{i}]"
        if not isinstance(label, str):
            problems.append(f"{where}: {label!r} is {type(label).__name__}, not text; quote it, e.g. '{label}'")
        elif not label.strip():
            problems.append(f"{where}: a label must be non-empty text")
        elif "\x00" in label:
            problems.append(f"{where}: {label!r} contains a NUL character, which Postgres text cannot store; "
                            "remove it")
        elif label != label.strip():
            problems.append(f"{where}: {label!r} has leading or trailing blanks, so no answer could match it; "
                            f"use {label.strip()!r}")
        elif label in seen:
            problems.append(f"{where}: {label!r} appears twice; labels must be distinct, remove the duplicate")
        else:
            seen.add(label)
    return problems


@dataclass(frozen=True)
class ResponseFormat:
    """Free text (default), one label of a list, or JSON valid for a JSON schema.

    Checked when built (ConfigError, a ValueError, naming the problem and the fix): labels per
    ``label_problems``; a JSON schema per ``json_schema.schema_problems`` (valid for its dialect,
    ``$ref`` only inside the schema: nothing is ever fetched). So a bad format fails before any request.

    ``validate(text)`` turns a raw answer into the value or raises ModelError(INVALID_OUTPUT): an
    output that violates its format is an error, never a value.
    """

    type: str = "text"  # "text" | "labels" | "json"
    labels: tuple[str, ...] = ()
    json_schema: dict | None = None

    def __post_init__(self):
        if self.type not in FORMAT_TYPES:
            raise ConfigError([f"type: {self.type!r} is not a response format; use one of {', '.join(FORMAT_TYPES)}"],
                              context="response format")
        if self.type == "labels":
            problems = label_problems(self.labels)
            if problems:
                raise ConfigError(problems, context="response format")
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.type == "json" and self.json_schema is not None:
            from .json_schema import schema_problems

            problems = schema_problems(self.json_schema, "json_schema")
            if problems:
                raise ConfigError(problems, context="response format")

    @classmethod
    def text(cls) -> "ResponseFormat":
        return cls("text")

    @classmethod
    def one_of(cls, labels) -> "ResponseFormat":
        """One label of ``labels``, an iterable of distinct non-empty text (else a ConfigError)."""
        iterable = hasattr(labels, "__iter__") and not isinstance(labels, (str, bytes, dict))
        return cls("labels", labels=tuple(labels) if iterable else labels)

    @classmethod
    def json(cls, schema: dict | None = None) -> "ResponseFormat":
        return cls("json", json_schema=schema or {"type": "object"})

    def to_canonical(self) -> dict | None:
        """The part of the cache fingerprint that describes this format (None for free text)."""
        if self.type == "text":
            return None
        if self.type == "labels":
            return {"type": "labels", "labels": list(self.labels)}
        return {"type": "json", "schema": self.json_schema}

    def validate(self, text: str | None) -> tuple[str, Any]:
        """Return (clean_text, value); raise ModelError(INVALID_OUTPUT) when the answer is not valid."""
        if text is None or not text.strip():
            raise ModelError(ErrorKind.INVALID_OUTPUT, "empty answer")
        if self.type == "text":
            return text, text
        if self.type == "labels":
            label = self._label_of(text)
            return label, label
        value = _parse_json_answer(text)
        _check_schema(value, self.json_schema)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")), value

    def _label_of(self, text: str) -> str:
        """The label an answer names: exactly, as a JSON string, or without quotes / a final period;
        ignoring case only when that matches a single label."""
        raw = text.strip()
        candidates = [raw]
        if raw.startswith('"'):
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = None
            if isinstance(decoded, str):
                candidates.append(decoded.strip())
        candidates.append(raw.strip("\"'`.").strip())
        for candidate in candidates:
            if candidate in self.labels:
                return candidate
        for candidate in candidates:
            folded = [label for label in self.labels if label.casefold() == candidate.casefold()]
            if len(folded) == 1:
                return folded[0]
        raise ModelError(
            ErrorKind.INVALID_OUTPUT,
            f"answer {candidates[-1][:80]!r} is not one of the labels {list(self.labels)}",
        )


def _parse_json_answer(text: str) -> Any:
    body = text.strip()
    if body.startswith("```"):  # models like to fence JSON
        body = body.strip("`")
        if body.startswith("json"):
            body = body[4:]
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ModelError(ErrorKind.INVALID_OUTPUT, f"answer is not valid JSON: {exc.msg}") from None


def _check_schema(value: Any, schema: dict | None) -> None:
    if not schema:
        return
    import jsonschema  # imported lazily: only JSON-format calls pay for it

    from .json_schema import local_validator

    validator = local_validator(schema)  # checked, built once per schema; never fetches a $ref
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ModelError(ErrorKind.INVALID_OUTPUT, f"JSON does not match the schema at {where}: {error.message}")


@dataclass(frozen=True)
class ModelInput:
    """One request. ``temperature``/``max_tokens`` of None mean: use the model's configured value.

    ``want_confidence``: the caller decides on ``ModelOutput.confidence`` (a cascade or vote
    strategy), so the provider is asked for logprobs. Label answers always ask for them (their
    confidence is stored with the label); other calls do not, as some servers reject the parameter.
    """

    prompt: str
    system_message: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    want_confidence: bool = False

    @property
    def wants_logprobs(self) -> bool:
        return self.want_confidence or self.response_format.type == "labels"

    def with_defaults(self, temperature: float, max_tokens: int) -> "ModelInput":
        """Fill unset parameters from the model's config (done before the cache key is computed)."""
        return replace(
            self,
            temperature=temperature if self.temperature is None else self.temperature,
            max_tokens=max_tokens if self.max_tokens is None else self.max_tokens,
            stop=tuple(self.stop),
        )


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one or more requests. ``prompt`` counts every input token, provider prompt-cache
    reads and writes included (OpenAI's ``prompt_tokens`` does; Anthropic's ``input_tokens`` does
    not, so its provider adds them); ``cached`` (read from the provider's prompt cache, billed at
    a discount) and ``cache_write`` (written to it, Anthropic: billed at a premium) are parts of it."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @property
    def uncached(self) -> int:
        """The input tokens billed at the plain input price."""
        return self.prompt - self.cached - self.cache_write

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(self.prompt + other.prompt, self.completion + other.completion,
                          self.cached + other.cached, self.cache_write + other.cache_write)


@dataclass
class ModelOutput:
    """The result of one call. On failure ``text``/``value`` are None and ``error_kind`` says why.

    ``value`` is the validated, typed answer: the text, the label, or the parsed JSON.
    ``model`` is the model that answered (after failover it differs from the one asked).
    """

    text: str | None = None
    value: Any = None
    confidence: float | None = None
    tokens: TokenUsage = field(default_factory=TokenUsage)
    truncated: bool = False
    error_kind: ErrorKind = ErrorKind.NONE
    error_message: str | None = None
    model: str | None = None
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 1
    recoverable: bool = False  # for failures: may another try (or another model) succeed?
    saved_cost_usd: float = 0.0  # for cache hits: what the answer cost when it was paid for

    @property
    def ok(self) -> bool:
        return self.error_kind is ErrorKind.NONE

    @property
    def tokens_used(self) -> int:
        return self.tokens.total

    @classmethod
    def failure(cls, error: ModelError, *, model: str | None = None, latency_ms: float = 0.0,
                attempts: int = 1) -> "ModelOutput":
        return cls(error_kind=error.kind, error_message=error.message, model=model or error.model,
                   latency_ms=latency_ms, attempts=attempts, recoverable=error.recoverable)

    def raise_for_error(self) -> "ModelOutput":
        if not self.ok:
            raise ModelError(self.error_kind, self.error_message or "", model=self.model)
        return self


def confidence_from_logprobs(logprobs: list[float] | None) -> float | None:
    """exp(mean token logprob): the geometric-mean token probability; None when not available."""
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))
