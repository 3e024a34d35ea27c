"""The cache key: the one definition used by Python and by SQL.

    fingerprint = sha256_hex(canonical JSON of {provider, model_version, system_message,
                                                temperature, max_tokens, stop, response_format})
    key         = sha256_hex(fingerprint + "\\n" + prompt)

Canonical JSON = sorted keys, separators ``,`` and ``:``, UTF-8, no ASCII escaping
(``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
``response_format`` is null for free text, ``{"type":"labels","labels":[...]}`` or
``{"type":"json","schema":{...}}``. Temperature is a float (0 -> 0.0), stop a list.
A request that asks for a confidence (``ModelInput.want_confidence``, e.g. a cascade's member
call) adds ``"confidence": true`` unless its format is labels (label answers always carry one):
an answer cached without a confidence must not serve a call that decides on it. Other requests'
keys are unchanged by this field.
The API URL and API key are deliberately not part of the key: the same model behind another URL
(a proxy, a new key) gives the same answers.

In Postgres the key of each row is computed by ``key_sql`` below, with the fingerprint computed
here once per column and inlined as a literal:

    encode(sha256(convert_to('<fingerprint>' || E'\\n' || (<prompt expression>), 'UTF8')), 'hex')
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig
    from .model_io import ModelInput

__all__ = ["canonical_json", "fingerprint", "fingerprint_of", "cache_key", "request_key", "key_sql"]


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(*, provider: str, model_version: str, system_message: str | None, temperature: float,
                max_tokens: int, stop=(), response_format: dict | None = None, confidence: bool = False) -> str:
    params = {
        "provider": provider,
        "model_version": model_version,
        "system_message": system_message,
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "stop": list(stop or ()),
        "response_format": response_format,
    }
    if confidence:
        params["confidence"] = True
    return _sha256_hex(canonical_json(params))


# fingerprint_of's memo: every row of a column shares one config and one response format, so the
# canonical JSON and its hash are made once per column, not once per request. A format is keyed by
# its type and labels, or by its JSON schema object (a dict: by identity). Each entry holds the
# config and that schema, so no id in a key can be reused by another object while the entry exists.
_MEMO: dict[tuple, tuple] = {}
_MEMO_SIZE = 4096


def fingerprint_of(config: "ModelConfig", inp: "ModelInput") -> str:
    """Fingerprint of a request to a model: unset input parameters take the model's defaults."""
    temperature = config.temperature if inp.temperature is None else inp.temperature
    max_tokens = config.max_tokens if inp.max_tokens is None else inp.max_tokens
    response_format = inp.response_format
    schema = response_format.json_schema
    confidence = inp.want_confidence and response_format.type != "labels"
    memo_key = (id(config), response_format.type, response_format.labels, id(schema), inp.system_message,
                temperature, max_tokens, tuple(inp.stop), confidence)
    hit = _MEMO.get(memo_key)
    if hit is not None and hit[0] is config and hit[1] is schema:
        return hit[2]
    value = fingerprint(provider=config.provider, model_version=config.model_version,
                        system_message=inp.system_message, temperature=temperature, max_tokens=max_tokens,
                        stop=inp.stop, response_format=response_format.to_canonical(), confidence=confidence)
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.clear()
    _MEMO[memo_key] = (config, schema, value)
    return value


def cache_key(fingerprint_hex: str, prompt: str) -> str:
    return _sha256_hex(fingerprint_hex + "\n" + prompt)


def request_key(config: "ModelConfig", inp: "ModelInput") -> str:
    """The cache key of one request to a model (what Model, Engine and the fill all mean by "key")."""
    return cache_key(fingerprint_of(config, inp), inp.prompt)


def key_sql(fingerprint_hex: str, prompt_sql: str) -> str:
    """The SQL expression computing ``cache_key(fingerprint, <prompt_sql>)`` per row in Postgres.

    NULL prompt -> NULL key (|| propagates NULL), so a NULL prompt never matches or requests anything.
    """
    if not all(c in "0123456789abcdef" for c in fingerprint_hex) or len(fingerprint_hex) != 64:
        raise ValueError("fingerprint must be a 64-character lowercase sha256 hex digest")
    return (f"encode(sha256(convert_to('{fingerprint_hex}' || E'\\n' || ({prompt_sql})::text, 'UTF8')), 'hex')")
