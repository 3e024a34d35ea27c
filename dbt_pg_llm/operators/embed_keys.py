"""What decides an embedding's key and what is sent for a text: the model's config (Anthropic has no
embeddings endpoint: a config error), the fingerprint of (provider, model_version, dimensions), the
key of a text (``keys.cache_key``, in Python and in SQL), and a text made ready to send (truncated
over the model's limit, or failed alone). No I/O here: ``embed.py`` fills, ``embed_batch.py`` submits.
"""
from __future__ import annotations

from typing import Iterable

from ..errors import ConfigError
from ..models.config import ModelConfig
from ..models.keys import cache_key, canonical_json, key_sql

__all__ = ["MAX_INPUT_TOKENS", "embedding_config", "embedding_fingerprint", "embedding_key", "keyed_texts",
           "embedding_key_sql", "approx_tokens", "prepare_text"]

MAX_INPUT_TOKENS = 8191  # text-embedding-3-* / ada-002 per input


def embedding_config(engine, model_name: str) -> ModelConfig:
    """The model's config; ConfigError naming the key when it cannot embed (Anthropic has no endpoint)."""
    config = engine.model(model_name).config
    if config.provider == "anthropic":
        raise ConfigError([f"models.{model_name}.provider: 'anthropic' has no embeddings endpoint; point "
                           "pg_llm.embed(model=...) at a model entry with provider openai or azure (OpenAI, Azure, "
                           "or an OpenAI-compatible server such as vLLM, Ollama or llama.cpp) and an embedding "
                           "model_version, e.g. text-embedding-3-small"], context="embedding model")
    return config


def embedding_fingerprint(config: ModelConfig, dimensions: int | None = None) -> str:
    """sha256 of the canonical JSON of what decides a vector: provider, model_version, dimensions."""
    import hashlib

    params = {"kind": "embed", "provider": config.provider, "model_version": config.model_version,
              "dimensions": int(dimensions) if dimensions else None}
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def embedding_key(fingerprint: str, text: str) -> str:
    return cache_key(fingerprint, text)


def keyed_texts(fingerprint: str, texts: Iterable[str | None]) -> dict[str, str]:
    """``{key: text}`` of the distinct non-NULL texts, in first-seen order (one request slot per key)."""
    by_key: dict[str, str] = {}
    for text in texts:
        if text is not None:
            by_key.setdefault(embedding_key(fingerprint, text), text)
    return by_key


def embedding_key_sql(fingerprint: str, text_sql: str) -> str:
    return key_sql(fingerprint, text_sql)


def approx_tokens(text: str) -> int:
    # ~4 characters a token (the simulator's count; cl100k averages ~4 on English): an upper bound
    # for ASCII would need the real tokenizer, and truncation only needs to stay under the limit
    return (len(text) + 3) // 4


def _truncate(text: str, max_tokens: int) -> str:
    return text[: max_tokens * 4 - 4] if approx_tokens(text) > max_tokens else text


def prepare_text(text: str, max_input_tokens: int = MAX_INPUT_TOKENS, truncate: bool = True) -> tuple[str | None, str | None]:
    """(the text to send, None) or (None, why its row fails): over ``max_input_tokens`` it is
    truncated (``truncate=False``: it fails), an empty text fails."""
    if approx_tokens(text) > max_input_tokens:
        if not truncate:
            return None, (f"invalid_input: the text has about {approx_tokens(text)} tokens, over the model's "
                          f"{max_input_tokens}; shorten it or allow truncation")
        text = _truncate(text, max_input_tokens)
    if not text.strip():
        return None, "invalid_input: an empty text has no embedding (the row gets NULL)"
    return text, None
