"""Token counts that are upper bounds of what a provider bills, as tight as the model allows.

The spend cap reserves, and the estimate prints, the worst case of each request (spend.py): its
prompt tokens at the input price plus its output tokens at the output price. Both must be UPPER
bounds of what the provider counts (or the ledger could pass the cap), and should be tight (or the
cap stops early and the estimate misleads). A model's ``tokenizer`` setting says how to count:

================  ==========================================================================
``bytes``         UTF-8 bytes per message + 8 per message + 8 for the reply. A bound for every
                  byte-level BPE tokenizer (OpenAI's, Anthropic's, Llama's, Qwen's: a token
                  covers at least one byte), so for any server; ~4x an English text's tokens.
``o200k_base``    OpenAI's encodings, counted exactly (``bpe-openai`` ships both, no download:
``cl100k_base``   tiktoken fetches its files at first use, which an offline machine cannot),
                  + 8 per message + 8 for the reply (OpenAI documents 3 and 3). Assumes the
                  server tokenizes with that encoding: OpenAI's own models (gpt-4o*, gpt-4.1*,
                  o-series, gpt-5*: o200k; gpt-4, gpt-3.5: cl100k).
``simulator``     the bundled simulator's count (dbt_pg_llm/simulator/answers.py): ceil(chars/4)
                  + 3 per message, no reply tokens, no schema: exact, no margin.
``auto``          (default) o200k_base / cl100k_base for an OpenAI or Azure model whose
                  ``model_version`` names an OpenAI model (when ``bpe-openai`` is installed),
                  else ``bytes``.
================  ==========================================================================

A schema sent as ``response_format`` / a forced tool (``structured_sent``) is billed as prompt:
its JSON plus ``STRUCTURED_PROMPT_TOKENS`` (Anthropic's tool-use system prompt is ~350 tokens).

Output: free text and JSON are bounded by ``max_tokens`` (the provider stops there). A classify
answer is one of its labels, so a request is bounded (and sent ``max_tokens``) by the longest
label's tokens + ``LABEL_MARGIN_TOKENS`` (quotes, a code fence, a final period some servers add;
0 for the simulator, which answers the bare label), + the ``{"label": ...}`` wrapper when the
labels are sent as an enum, + ``TOOL_ANSWER_TOKENS`` for a forced tool call. The column's (or the
model's) ``max_tokens`` still applies when smaller. This assumes the model answers without
reasoning tokens first (a "thinking" model bills those as output; give it ``kind: complete``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from .model_io import ModelInput, ResponseFormat

__all__ = ["TOKENIZERS", "TokenCounter", "token_counter", "tokenizer_problems", "prompt_tokens_bound",
           "output_tokens_bound", "packed_output_tokens_bound", "structured_sent", "STRUCTURED_PROMPT_TOKENS",
           "LABEL_MARGIN_TOKENS", "TOOL_ANSWER_TOKENS"]

TOKENIZERS = ("auto", "bytes", "o200k_base", "cl100k_base", "simulator")
STRUCTURED_PROMPT_TOKENS = 512  # a schema / tool's framing (Anthropic's tool-use system prompt: ~350)
LABEL_MARGIN_TOKENS = 16  # what a server may wrap a label in: quotes, a code fence, a period, blanks
TOOL_ANSWER_TOKENS = 64  # a forced tool call's own output framing (Anthropic tool_use block)
_LABEL_WRAPPER = '{"label":""}'  # labels sent as an enum answer {"label": "<label>"}

# OpenAI model ids by encoding (first match wins); anything else counts bytes under ``auto``
_OPENAI_ENCODINGS = ((re.compile(r"^(ft:)?(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4)"), "o200k_base"),
                     (re.compile(r"^(ft:)?(gpt-4|gpt-3\.5)"), "cl100k_base"))


@dataclass(frozen=True)
class TokenCounter:
    """How one model's requests are counted: ``count(text)`` tokens of a text, plus overheads."""

    name: str
    count: Callable[[str], int]
    per_message: int  # role and separators of one message
    reply: int  # the tokens priming the reply
    structured: int  # framing of a schema / tool sent with the request (its JSON is counted too)
    label_margin: int  # around a label answer


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _quarter_chars(text: str) -> int:
    return (len(text) + 3) // 4


@lru_cache(maxsize=None)
def _encoding_count(name: str) -> Callable[[str], int] | None:
    try:
        import bpe_openai  # optional (pip install "dbt-pg-llm[tokens]"): ships o200k_base and cl100k_base
    except ImportError:
        return None
    encoding = bpe_openai.get_encoding(name)
    # encode_ordinary: a prompt's "<|endoftext|>" is text to the API, never a special token
    return lambda text: len(encoding.encode_ordinary(text))


_BYTES = TokenCounter("bytes", _utf8_bytes, 8, 8, STRUCTURED_PROMPT_TOKENS, LABEL_MARGIN_TOKENS)
_SIMULATOR = TokenCounter("simulator", _quarter_chars, 3, 0, 0, 0)


@lru_cache(maxsize=256)
def _counter(tokenizer: str, provider: str, model_version: str) -> TokenCounter:
    if tokenizer == "simulator":
        return _SIMULATOR
    if tokenizer == "auto":
        tokenizer = "bytes"
        if provider in ("openai", "azure"):
            tokenizer = next((enc for pattern, enc in _OPENAI_ENCODINGS if pattern.match(model_version)), "bytes")
    if tokenizer in ("o200k_base", "cl100k_base"):
        count = _encoding_count(tokenizer)
        if count is not None:  # without bpe-openai: the byte bound (looser, still a bound)
            return TokenCounter(tokenizer, count, 8, 8, STRUCTURED_PROMPT_TOKENS, LABEL_MARGIN_TOKENS)
    return _BYTES


def token_counter(config: Any) -> TokenCounter:
    """The counter of a model's config (a ModelConfig, or anything with ``provider`` / ``model_version``;
    no ``tokenizer`` attribute means ``auto``)."""
    return _counter(getattr(config, "tokenizer", None) or "auto", str(getattr(config, "provider", "") or ""),
                    str(getattr(config, "model_version", "") or "").lower())


def tokenizer_problems(value: Any, provider: str, path: str) -> list[str]:
    """What is wrong with a ``tokenizer`` setting (empty when usable), naming the key and the fix."""
    if value not in TOKENIZERS:
        return [f"{path}.tokenizer: {value!r} is not a tokenizer; use one of {', '.join(TOKENIZERS)} "
                "(auto: OpenAI's encoding for OpenAI models, else bytes, a bound for any server)"]
    if value in ("o200k_base", "cl100k_base") and provider == "anthropic":
        return [f"{path}.tokenizer: {value} is OpenAI's encoding; Anthropic's tokenizer is not public, so its "
                "requests can only be bounded by bytes: remove the setting (auto) or use bytes"]
    return []


def structured_sent(config: Any, fmt: ResponseFormat) -> str | None:
    """How ``fmt``'s schema travels with the request (as the providers build it): ``"schema"`` (a
    response_format), ``"tool"`` (a forced tool call) or None (only in the prompt, or free text)."""
    mode = getattr(config, "structured_output", "auto") or "auto"
    anthropic = getattr(config, "provider", None) == "anthropic"
    if fmt.type == "json" and mode in ("auto", "json_schema", "tool"):
        return "tool" if anthropic else "schema"
    if fmt.type == "labels" and mode in ("json_schema", "tool"):
        return "tool" if anthropic else "schema"
    if fmt.type == "labels" and mode == "auto" and not anthropic:  # OpenAI-compatible auto: an enum (openai.py)
        return "schema"
    return None


def prompt_tokens_bound(config: Any, inp: ModelInput) -> int:
    """An upper bound on the prompt tokens the provider bills for ``inp`` (see the module doc)."""
    counter = token_counter(config)
    messages = [m for m in (inp.system_message, inp.prompt) if m]
    tokens = sum(counter.count(m) + counter.per_message for m in messages) or counter.per_message
    fmt = inp.response_format
    if structured_sent(config, fmt) and counter is not _SIMULATOR:  # the simulator bills messages only
        shape = fmt.json_schema if fmt.type == "json" else {"label": {"enum": list(fmt.labels)}}
        tokens += counter.count(json.dumps(shape, ensure_ascii=False)) + counter.structured
    return tokens + counter.reply


def output_tokens_bound(config: Any, inp: ModelInput) -> int:
    """An upper bound on the output tokens of ``inp``: ``max_tokens`` (the request's, else the
    config's), and for labels at most the longest label's tokens + the margins (what is sent)."""
    max_tokens = inp.max_tokens if inp.max_tokens is not None else int(getattr(config, "max_tokens", 0) or 0)
    fmt = inp.response_format
    if fmt.type != "labels":
        return max_tokens
    counter = token_counter(config)
    sent = structured_sent(config, fmt)
    # as an enum the label comes back as a JSON string: its quotes and escapes count too
    bound = max(_json_label_tokens(counter, label) if sent else counter.count(label) for label in fmt.labels)
    bound += counter.label_margin
    if sent:
        bound += counter.count(_LABEL_WRAPPER) + (TOOL_ANSWER_TOKENS if sent == "tool" else 0)
    return min(max_tokens, bound) if max_tokens > 0 else bound


def packed_output_tokens_bound(config: Any, inp: ModelInput, rows: int) -> int:
    """An upper bound on the output of a packed request of ``rows`` rows like ``inp`` (batch.py: a
    JSON array of their answers): ``max_tokens`` per row, and for labels each row's longest label as
    a JSON string and its separator, + the array's brackets and the margin (what is sent)."""
    max_tokens = inp.max_tokens if inp.max_tokens is not None else int(getattr(config, "max_tokens", 0) or 0)
    if inp.response_format.type != "labels":
        return max_tokens * rows
    counter = token_counter(config)
    # per row: '"label", ' (the simulator and most servers write '"label",'); summed per row, a count
    # is never below the count of the whole array (ceil of a sum, bytes; BPE: the margin)
    per_row = max(_json_label_tokens(counter, label + ", ") for label in inp.response_format.labels)
    return min(max_tokens * rows, rows * per_row + counter.count("[]") + counter.label_margin)


def _json_label_tokens(counter: TokenCounter, label: str) -> int:
    """Tokens of ``label`` as a JSON string, whether the server escapes non-ASCII text or not."""
    return max(counter.count(json.dumps(label)), counter.count(json.dumps(label, ensure_ascii=False)))
