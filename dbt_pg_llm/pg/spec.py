"""What an LLM column asks for (``ColumnSpec``) and where a fill comes from (``RunContext``).

These are the inputs of a fill, shared by the SQL path (``fill_column`` / ``join_sql``) and the
DataFrame path (``LlmFrameSession``). ``ColumnSpec.from_dict`` validates a spec as the dbt macros
pass it and turns it into the engine's ``ModelInput`` (system message, response format), its
fingerprint and the SQL of its per-row key. ``CLASSIFY_PHRASE`` / ``EXTRACT_PHRASE`` are the fixed
system-prompt phrases of classify / extract (the simulator recognises exactly these); classify's labels
follow as a JSON list, extract's schema as canonical JSON. ``FILTER_PHRASE`` (kind ``filter``: a yes/no
question, answered with one of the two labels ``FILTER_LABELS``, joined as a boolean, with its
``<name>__confidence``) and ``MULTI_LABEL_PHRASE`` (``classify`` with ``multi_label: true``: a JSON
object ``{"labels": [...]}`` of labels, joined as ``text[]`` in label order) are built the same way.
From Python (e.g. another operator building on them)::

    ColumnSpec.from_dict({"kind": "filter", "prompt_sql": "body", "question": "Is it about shipping?",
                          "model": "sim"})
    ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": ["a", "b"],
                          "multi_label": True, "model": "sim"})

then ``model_input(text)`` is the request of one row, ``fingerprint(config)`` / ``key_sql`` its key
(the question and ``multi_label`` are in it, through the system message and response format) and
``join.join_sql`` the typed column. Everything a request needs is checked here,
before anything is paid for: labels (``label_problems``) and JSON schemas (``schema_problems``:
valid for their dialect, ``$ref`` only inside the schema). No SQL runs here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

from ..errors import ConfigError
from ..models.batch_policy import COLUMN_MODES
from ..models.config import check_keys
from ..models.json_schema import schema_problems
from ..models.keys import canonical_json, fingerprint_of, key_sql
from ..models.model_io import ModelInput, ResponseFormat, label_problems

__all__ = ["ColumnSpec", "RunContext", "CLASSIFY_PHRASE", "EXTRACT_PHRASE", "FILTER_PHRASE", "FILTER_LABELS",
           "MULTI_LABEL_PHRASE", "multi_label_schema", "check_fill_settings"]

KINDS = ("complete", "classify", "extract", "filter")
SPEC_KEYS = ("kind", "prompt_sql", "system", "model", "max_tokens", "temperature", "labels", "instructions",
             "schema", "name", "mode", "batch_size", "question", "multi_label")
# The simulator (and good practice) recognise exactly these phrases.
CLASSIFY_PHRASE = "Answer with exactly one of these labels and nothing else: "
EXTRACT_PHRASE = "Reply with JSON only, matching this JSON schema: "
# filter: the question follows the phrase, to the end of the system message
FILTER_PHRASE = ("Decide whether the text satisfies the condition below. Reply with exactly true or false "
                 "and nothing else. Condition: ")
FILTER_LABELS = ("true", "false")  # answered as labels (logprob confidence, packing), joined as boolean
# multi-label: the labels follow as a JSON list (like CLASSIFY_PHRASE)
MULTI_LABEL_PHRASE = ('Reply with JSON only: {"labels": [...]} listing every label of this list that applies '
                      "to the text (an empty list when none does), each at most once: ")


def multi_label_schema(labels) -> dict:
    """The response schema of a multi-label answer: only the labels, each at most once (an object at the
    root, as strict structured output requires)."""
    return {"type": "object", "additionalProperties": False, "required": ["labels"],
            "properties": {"labels": {"type": "array", "items": {"type": "string", "enum": list(labels)},
                                      "uniqueItems": True}}}


@dataclass(frozen=True)
class ColumnSpec:
    """What one LLM column asks for. Build it with ``from_dict`` (which validates)."""

    kind: str
    prompt_sql: str
    model: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    labels: tuple[str, ...] = ()
    instructions: str | None = None
    schema: Any = None  # JSON schema (extract); a dict, kept as given
    name: str | None = None  # the output column, when the caller puts it in the spec
    mode: str | None = None  # "batch" | "normal" | None (the model's batch policy decides); not in the key
    batch_size: int | None = None  # rows packed per request (None: the model's batch_size); not in the key
    question: str | None = None  # filter: the condition asked of each text (in the key, via the system message)
    multi_label: bool = False  # classify: a list of labels (text[]) instead of one (in the key, via the format)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "ColumnSpec", default_model: str | None = None,
                  path: str = "column") -> "ColumnSpec":
        """Validate a spec as the dbt macros pass it; ConfigError lists every problem with its fix."""
        if isinstance(data, ColumnSpec):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError([f"{path}: expected a mapping like {{'kind': 'complete', 'prompt_sql': ...}}, "
                               f"got {type(data).__name__}"], context="LLM column spec")
        try:
            check_keys(dict(data), SPEC_KEYS, path)
        except ConfigError as exc:
            raise ConfigError(exc.problems, context="LLM column spec") from None
        problems: list[str] = []
        kind = data.get("kind")
        if kind not in KINDS:
            problems.append(f"{path}.kind: {kind!r} is not a column kind; use one of {', '.join(KINDS)}")
        prompt_sql = data.get("prompt_sql")
        if not isinstance(prompt_sql, str) or not prompt_sql.strip():
            problems.append(f"{path}.prompt_sql: missing; give the SQL expression of the prompt, "
                            "e.g. 'Summarize: ' || body")
        model = data.get("model") or default_model
        if not isinstance(model, str) or not model:
            problems.append(f"{path}.model: missing and no default model is configured; set model: <name> "
                            "on the column or a default model in the profile's llm block")
        system = data.get("system")
        instructions = data.get("instructions")
        labels = data.get("labels")
        schema = data.get("schema")
        for key, value in (("system", system), ("instructions", instructions)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{path}.{key}: expected text, got {type(value).__name__}")
        max_tokens = data.get("max_tokens")
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, float)) or max_tokens <= 0 \
                    or int(max_tokens) != max_tokens:
                problems.append(f"{path}.max_tokens: {max_tokens!r} must be a positive whole number, e.g. 256")
            else:
                max_tokens = int(max_tokens)
        temperature = data.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                    or not 0 <= temperature <= 2:
                problems.append(f"{path}.temperature: {temperature!r} must be a number from 0 to 2")
            else:
                temperature = float(temperature)
        if kind == "classify":
            problems.extend(label_problems(labels, f"{path}.labels"))
        elif labels:
            problems.append(f"{path}.labels: only used by kind 'classify'; remove it or change kind")
        question = data.get("question")
        if kind == "filter":
            if not isinstance(question, str) or not question.strip():
                problems.append(f"{path}.question: filter needs the condition as non-empty text, e.g. "
                                "question: 'Does the review mention shipping?'")
            elif "\x00" in question:
                problems.append(f"{path}.question: contains a NUL character, which Postgres text cannot store")
        elif question is not None:
            problems.append(f"{path}.question: only used by kind 'filter'; remove it or change kind")
        multi_label = data.get("multi_label", False)
        if multi_label is None:
            multi_label = False
        if not isinstance(multi_label, bool):
            problems.append(f"{path}.multi_label: {multi_label!r} must be true or false (true: a text[] of every "
                            "label that applies)")
        elif multi_label and kind != "classify":
            problems.append(f"{path}.multi_label: only used by kind 'classify'; remove it or change kind")
        if kind == "extract":
            if not isinstance(schema, Mapping) or not schema:
                problems.append(f"{path}.schema: extract needs a JSON schema (a mapping), e.g. "
                                "{type: object, properties: {city: {type: string}}}")
            else:
                problems.extend(schema_problems(dict(schema), f"{path}.schema"))
        elif schema is not None:
            problems.append(f"{path}.schema: only used by kind 'extract'; remove it or change kind")
        if kind in ("classify", "extract", "filter") and system is not None:
            problems.append(f"{path}.system: not used by kind '{kind}'; put extra guidance in 'instructions'")
        if kind == "complete" and instructions is not None:
            problems.append(f"{path}.instructions: not used by kind 'complete'; use 'system' for the system prompt")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"{path}.name: expected the output column's name as text")
        mode = data.get("mode")
        if mode is not None and mode not in COLUMN_MODES:
            problems.append(f"{path}.mode: {mode!r} is not a mode; use 'batch' (provider batch API, half price, "
                            "answers within 24 h) or 'normal', or leave it out to follow the model's batch setting")
        batch_size = data.get("batch_size")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            problems.append(f"{path}.batch_size: {batch_size!r} must be a whole number >= 1, e.g. 16 to pack 16 "
                            "short prompts per request (1 = one request per prompt)")
        if problems:
            raise ConfigError(problems, context="LLM column spec")
        return cls(kind=kind, prompt_sql=prompt_sql, model=model, system=system, max_tokens=max_tokens,
                   temperature=temperature, labels=tuple(labels) if kind == "classify" else (),
                   instructions=instructions,
                   schema=json.loads(json.dumps(schema)) if kind == "extract" else None, name=name,
                   mode=mode, batch_size=batch_size, question=question if kind == "filter" else None,
                   multi_label=multi_label is True and kind == "classify")

    @property
    def system_message(self) -> str | None:
        prefix = (self.instructions + "\n\n") if self.instructions else ""
        if self.kind == "filter":
            return prefix + FILTER_PHRASE + str(self.question)
        if self.kind == "classify" and self.multi_label:
            return prefix + MULTI_LABEL_PHRASE + json.dumps(list(self.labels), ensure_ascii=False)
        if self.kind == "classify":
            # a JSON list: a label holding any delimiter (" | ", a comma, a newline) stays one label
            return prefix + CLASSIFY_PHRASE + json.dumps(list(self.labels), ensure_ascii=False)
        if self.kind == "extract":
            return prefix + EXTRACT_PHRASE + canonical_json(self.schema)
        return self.system

    @cached_property  # built (and checked) once per spec, not once per key
    def response_format(self) -> ResponseFormat:
        if self.kind == "filter":
            return ResponseFormat.one_of(FILTER_LABELS)
        if self.kind == "classify" and self.multi_label:
            return ResponseFormat.json(multi_label_schema(self.labels))
        if self.kind == "classify":
            return ResponseFormat.one_of(self.labels)
        if self.kind == "extract":
            return ResponseFormat.json(self.schema)
        return ResponseFormat.text()

    @cached_property
    def effective_max_tokens(self) -> int | None:
        """``max_tokens`` as sent: a multi-label answer is at most every label once, so unless set it is
        sized from the labels (UTF-8 bytes of the full answer + a margin: a bound for any byte-level BPE
        tokenizer), as a classify request is sized by its longest label (tokens.py)."""
        if self.max_tokens is not None or not self.multi_label:
            return self.max_tokens
        full = json.dumps({"labels": list(self.labels)}, ensure_ascii=False)
        return len(full.encode("utf-8")) + 16 + 2 * len(self.labels)  # blanks / newlines a server may add

    def model_input(self, prompt: str) -> ModelInput:
        return ModelInput(prompt=prompt, system_message=self.system_message, temperature=self.temperature,
                          max_tokens=self.effective_max_tokens, response_format=self.response_format)

    def fingerprint(self, model_config) -> str:
        return fingerprint_of(model_config, self.model_input(""))

    def key_sql(self, fingerprint: str, prompt_sql: str | None = None) -> str:
        """SQL of the per-row key (NULL for a NULL prompt) over the source's columns."""
        return key_sql(fingerprint, self.prompt_sql if prompt_sql is None else prompt_sql)

    @property
    def output_column(self) -> str:
        """The llm_results column holding this kind's answer."""
        return "output_json" if self.is_json else "output_text"

    @property
    def is_json(self) -> bool:
        """The answer is JSON (stored in ``output_json``): extract, and multi-label classify."""
        return self.kind == "extract" or self.multi_label


@dataclass(frozen=True)
class RunContext:
    """Where a fill comes from: ``run_id`` (dbt's invocation_id), ``node_id``, ``target``;
    ``continues``: the earlier run ids whose spend this run's ``max_cost_usd`` cap continues (a
    `dbt retry`'s retried invocations, newest first; budget.py)."""

    run_id: str
    node_id: str | None = None
    target: str | None = None
    continues: tuple[str, ...] = ()

    def as_context(self, **extra) -> dict:
        out = {"run_id": self.run_id, "node_id": self.node_id}
        out.update(extra)
        return out


def check_fill_settings(run, window, chunk_rows, max_cost_usd, cache_ttl_days, claim_timeout_s,
                        max_error_rate) -> None:
    """``fill_column``'s settings, checked before anything runs: the error names the setting."""
    if not isinstance(run, RunContext):
        raise TypeError("run: pass a RunContext(run_id=..., node_id=...)")
    if (window is not None and window < 1) or chunk_rows < 1:
        raise ValueError("window and chunk_rows must be >= 1")
    if max_cost_usd is not None and (not isinstance(max_cost_usd, (int, float)) or max_cost_usd <= 0):
        raise ConfigError([f"max_cost_usd: {max_cost_usd!r} must be a number > 0, or unset for no limit"])
    if cache_ttl_days is not None and (not isinstance(cache_ttl_days, (int, float)) or cache_ttl_days <= 0):
        raise ConfigError([f"cache_ttl_days: {cache_ttl_days!r} must be a number of days > 0, or unset"])
    if isinstance(claim_timeout_s, bool) or not isinstance(claim_timeout_s, (int, float)) or claim_timeout_s <= 0:
        raise ConfigError([f"claim_timeout_s: {claim_timeout_s!r} must be a number of seconds > 0, e.g. 120"])
    if max_error_rate is not None and (isinstance(max_error_rate, bool) or not 0 <= max_error_rate <= 1):
        raise ConfigError([f"max_error_rate: {max_error_rate!r} must be a share from 0 to 1, or unset"])
