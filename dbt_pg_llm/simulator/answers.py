"""Deterministic answers of the simulator: same request -> same answer, whatever the seed or order.

Everything is derived from sha256(system message + NUL + last user message):

* LABELS: the system message contains ``Answer with exactly one of these labels and nothing else: ``
  followed by the labels as a JSON list (or, in the older form, separated by `` | `` to the end of
  that line). The answer is the first label
  (in list order) that occurs as a word in the user text, case-insensitively, else one chosen by hash.
* JSON: an OpenAI ``response_format`` of type ``json_schema``, or the system phrase
  ``Reply with JSON only, matching this JSON schema: `` followed by the schema JSON. The answer is
  compact JSON valid for the schema; a string enum is picked like a label (so labels asked as an enum
  schema or a forced tool match the plain labels prompt). ``response_format: {"type": "json_object"}``
  gives a small object.
* TEXT: otherwise ``Summary: `` followed by words of the prompt, 5-20 words in all.

Token counting: prompt_tokens = sum over messages of ceil(len(content)/4) + 3; completion_tokens =
ceil(len(answer)/4), at least 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from functools import lru_cache
from typing import Any

from .aggregate_answers import aggregate_answer
from .filter_answers import rule_answer
from .rank_answers import rank_answer

__all__ = [
    "LABELS_PHRASE",
    "JSON_PHRASE",
    "count_tokens",
    "completion_tokens",
    "prompt_tokens",
    "prompt_sha256",
    "compute_answer",
    "cut_to_tokens",
    "logprobs_for",
    "generate_json",
    "mistaken_label",
]

LABELS_PHRASE = "Answer with exactly one of these labels and nothing else: "
JSON_PHRASE = "Reply with JSON only, matching this JSON schema: "

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_FALLBACK_WORDS = ("the", "data", "looks", "consistent", "with", "expected", "values", "overall")


def count_tokens(text: str) -> int:
    """ceil(len/4): the simulator's tokenizer."""
    return (len(text) + 3) // 4


def completion_tokens(answer: str) -> int:
    return max(1, (len(answer) + 3) // 4)


def prompt_tokens(contents: list[str]) -> int:
    """sum over messages of ceil(len(content)/4) + 3 per message."""
    return sum((len(c) + 3) // 4 + 3 for c in contents)


def prompt_sha256(user: str) -> str:
    """The ledger key of a request: sha256 hex of its last user message (UTF-8)."""
    return hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


def cut_to_tokens(answer: str, max_tokens: int) -> str:
    """The longest prefix of ``answer`` that fits in ``max_tokens`` completion tokens."""
    return answer[: max(0, max_tokens) * 4]


def _digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for i, p in enumerate(parts):
        if i:
            h.update(b"\x00")
        h.update(p.encode("utf-8", "surrogatepass"))
    return h.digest()


def _words(text: str) -> list[str]:
    words = _WORD_RE.findall(text)
    return words or list(_FALLBACK_WORDS)


# -- labels ----------------------------------------------------------------------------------------
def _labels_from(system: str) -> list[str] | None:
    idx = system.find(LABELS_PHRASE)
    if idx < 0:
        return None
    start = idx + len(LABELS_PHRASE)
    if system.startswith("[", start):
        try:
            listed, _ = json.JSONDecoder().raw_decode(system, start)
        except json.JSONDecodeError:
            listed = None
        if isinstance(listed, list) and listed and all(isinstance(x, str) for x in listed):
            return listed
    rest = system[start:].split("\n", 1)[0].strip()
    labels = [label.strip() for label in rest.split(" | ")]
    labels = [label for label in labels if label]
    return labels or None


# A tiny sentiment lexicon, so that sentiment labels in demos look like what a model would say.
_POSITIVE = frozenset("love loved great excellent amazing perfect happy recommend best exceeded fantastic "
                      "superb sturdy comfortable worth value delighted works".split())
_NEGATIVE = frozenset("regret broke broken terrible awful worst disappointed poor refund returned useless "
                      "cheap flimsy stopped defective waste leaks died bad".split())


def _pick_label(labels: list[str], user: str, digest: bytes) -> str:
    folded = user.casefold()
    for label in labels:
        pattern = r"(?<!\w)" + re.escape(label.casefold()) + r"(?!\w)"
        if re.search(pattern, folded):
            return label
    by_fold = {label.casefold(): label for label in labels}
    if "positive" in by_fold and "negative" in by_fold:
        words = set(re.findall(r"\w+", folded))
        score = len(words & _POSITIVE) - len(words & _NEGATIVE)
        if score > 0:
            return by_fold["positive"]
        if score < 0:
            return by_fold["negative"]
        if "neutral" in by_fold and (words & _POSITIVE or words & _NEGATIVE):
            return by_fold["neutral"]
    return labels[int.from_bytes(digest[:8], "big") % len(labels)]


# -- JSON ------------------------------------------------------------------------------------------
def _schema_from_system(system: str) -> Any:
    idx = system.find(JSON_PHRASE)
    if idx < 0:
        return None
    start = idx + len(JSON_PHRASE)
    try:
        schema, _ = json.JSONDecoder().raw_decode(system, start)
    except json.JSONDecodeError:
        line = system[start:].split("\n", 1)[0].strip()
        try:
            schema = json.loads(line)
        except json.JSONDecodeError:
            return {"type": "object"}
    return schema if isinstance(schema, (dict, bool)) else {"type": "object"}


_LIMIT_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
               "minItems", "maxItems")
_DESCRIBED_RE = re.compile(r"\b(" + "|".join(_LIMIT_KEYS) + r")\s*:\s*(-?\d+(?:\.\d+)?)")


def _with_described_limits(schema: dict) -> dict:
    """Limits a client moved into the description, as a model reads them: the anthropic SDK's
    structured outputs turn ``minimum: 1`` into ``"description": "{maximum: 5, minimum: 1}"``."""
    description = schema.get("description")
    if not isinstance(description, str) or ":" not in description:
        return schema
    found = {k: (float(v) if "." in v else int(v)) for k, v in _DESCRIBED_RE.findall(description) if k not in schema}
    return {**schema, **found} if found else schema


class _Gen:
    """Builds one value valid for a JSON schema, deterministically from a digest and the prompt words."""

    MAX_DEPTH = 12

    def __init__(self, root: Any, digest: bytes, user: str):
        self.root = root
        self.digest = digest
        self.user = user
        self.words = _words(user)

    def h(self, path: str) -> int:
        return int.from_bytes(hashlib.sha256(self.digest + path.encode()).digest()[:8], "big")

    def resolve(self, schema: dict) -> dict:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
            ref = schema["$ref"]
            target: Any = self.root
            if ref.startswith("#"):
                for part in [p for p in ref[1:].split("/") if p]:
                    part = part.replace("~1", "/").replace("~0", "~")
                    if isinstance(target, dict):
                        target = target.get(part, {})
                    elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                        target = target[int(part)]
                    else:
                        target = {}
            else:
                target = {}
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else rest
            seen += 1
        return schema

    def value(self, schema: Any, path: str = "", depth: int = 0) -> Any:
        if schema is True or schema is None:
            return self.string({}, path)
        if schema is False or not isinstance(schema, dict):
            return None
        schema = _with_described_limits(self.resolve(schema))
        if "allOf" in schema and isinstance(schema["allOf"], list):
            schema = self.merge(schema)
        if "const" in schema:
            return schema["const"]
        options = schema.get("enum")
        if isinstance(options, list) and options:
            if all(isinstance(o, str) for o in options):  # read the text, as a model picks a label
                return _pick_label(options, self.user, self.digest)
            return options[self.h(path + "#enum") % len(options)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                opts = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                base = {k: v for k, v in schema.items() if k not in (key,)}
                chosen = opts[0] if opts else options[0]
                chosen = self.resolve(chosen) if isinstance(chosen, dict) else chosen
                if isinstance(chosen, dict):
                    return self.value({**base, **chosen}, path, depth + 1)
                return self.value(chosen, path, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if kinds else "null"
        if kind is None:
            if "properties" in schema or "required" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self.object(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "integer":
            return self.integer(schema, path)
        if kind == "number":
            return self.number(schema, path)
        if kind == "boolean":
            return bool(self.h(path + "#bool") & 1)
        if kind == "null":
            return None
        return self.string(schema, path)

    def merge(self, schema: dict) -> dict:
        merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            sub = self.resolve(sub) if isinstance(sub, dict) else {}
            if "allOf" in sub:
                sub = self.merge(sub)
            for k, v in sub.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                elif k == "required":
                    merged["required"] = list(dict.fromkeys(list(merged.get("required", [])) + list(v)))
                else:
                    merged.setdefault(k, v)
        return merged

    def object(self, schema: dict, path: str, depth: int) -> dict:
        props = schema.get("properties") or {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        out: dict = {}
        names = list(props) if depth < self.MAX_DEPTH else [n for n in props if n in required]
        for name in names:
            out[name] = self.value(props[name], f"{path}/{name}", depth + 1)
        extra = schema.get("additionalProperties")
        for name in required:
            if name not in out:
                sub = extra if isinstance(extra, dict) else {"type": "string"}
                out[name] = self.value(sub, f"{path}/{name}", depth + 1)
        return out

    def array(self, schema: dict, path: str, depth: int) -> list:
        lo = int(schema.get("minItems", 0) or 0)
        hi = schema.get("maxItems")
        n = max(1, lo)
        if hi is not None:
            n = min(n, int(hi))
        if depth >= self.MAX_DEPTH:
            n = lo
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        out: list = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else items
            value = self.value(sub, f"{path}/{i}", depth + 1)
            if schema.get("uniqueItems"):
                tries = 0
                while value in out and tries < 16:
                    tries += 1
                    value = self.value(sub, f"{path}/{i}~{tries}", depth + 1)
            out.append(value)
        return out

    def _bounds(self, schema: dict, step: float) -> tuple[float, float]:
        lo = schema.get("minimum")
        hi = schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
            lo = xlo + step if lo is None else max(lo, xlo + step)
        if isinstance(xhi, (int, float)) and not isinstance(xhi, bool):
            hi = xhi - step if hi is None else min(hi, xhi - step)
        if lo is None and hi is None:
            lo, hi = 0, 100
        elif lo is None:
            lo = min(0, hi - 100)
        elif hi is None:
            hi = lo + 100
        return lo, hi

    def integer(self, schema: dict, path: str) -> int:
        lo, hi = self._bounds(schema, 1)
        lo, hi = math.ceil(lo), math.floor(hi)
        m = schema.get("multipleOf")
        if isinstance(m, int) and m > 0:
            first = math.ceil(lo / m) * m
            count = max(1, (hi - first) // m + 1)
            return int(first + m * (self.h(path + "#int") % count))
        if hi < lo:
            return int(lo)
        return int(lo + self.h(path + "#int") % (hi - lo + 1))

    def number(self, schema: dict, path: str) -> float:
        lo, hi = self._bounds(schema, 1e-6)
        frac = (self.h(path + "#num") % 10_000) / 10_000
        raw = lo + (hi - lo) * (0.1 + 0.8 * frac)
        rounded = round(raw, 2)
        value = rounded if lo <= rounded <= hi else raw
        m = schema.get("multipleOf")
        if isinstance(m, (int, float)) and m > 0:
            value = math.ceil(lo / m) * m
            if isinstance(m, int):
                value = int(value)
        return value

    def string(self, schema: dict, path: str) -> str:
        h = self.h(path + "#str")
        fmt = schema.get("format")
        word = self.words[h % len(self.words)].lower()
        if fmt == "date":
            text = f"2024-{1 + h % 12:02d}-{1 + (h >> 8) % 28:02d}"
        elif fmt == "date-time":
            text = f"2024-{1 + h % 12:02d}-{1 + (h >> 8) % 28:02d}T{(h >> 16) % 24:02d}:00:00Z"
        elif fmt == "time":
            text = f"{(h >> 16) % 24:02d}:{(h >> 24) % 60:02d}:00"
        elif fmt == "email":
            text = f"{word}@example.com"
        elif fmt in ("uri", "url", "iri"):
            text = f"https://example.com/{word}"
        elif fmt == "uuid":
            hx = hashlib.sha256(self.digest + path.encode()).hexdigest()
            text = f"{hx[:8]}-{hx[8:12]}-4{hx[13:16]}-8{hx[17:20]}-{hx[20:32]}"
        else:
            n = 1 + (h >> 8) % 3
            start = (h >> 16) % len(self.words)
            text = " ".join(self.words[(start + i) % len(self.words)] for i in range(n))
        lo = int(schema.get("minLength", 0) or 0)
        while len(text) < lo:
            text = (text + " " + word) if text else word
        hi = schema.get("maxLength")
        if hi is not None:
            text = text[: int(hi)]
        return text


def generate_json(schema: Any, user: str, system: str = "") -> Any:
    """A value valid for ``schema``, derived from the prompt (deterministic)."""
    return _Gen(schema, _digest(system, user), user).value(schema)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- the answer ------------------------------------------------------------------------------------
def _sent_schema(rf: dict) -> Any:
    spec = rf.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) else None


@lru_cache(maxsize=8192)
def compute_answer(system: str, user: str, response_format: str | None = None) -> tuple[str, str]:
    """Return (mode, answer) with mode one of "json", "labels", "text".

    ``response_format`` is the request's OpenAI response_format as JSON text (or None).
    """
    digest = _digest(system, user)
    rf: Any = None
    if response_format:
        try:
            rf = json.loads(response_format)
        except json.JSONDecodeError:
            rf = None
    rf_type = rf.get("type") if isinstance(rf, dict) else None
    ranking = rank_answer(system, user)  # pg_llm.top_k's windows: a ranking by word overlap
    if ranking is not None:
        return "json", ranking
    ruled = rule_answer(system, user, _sent_schema(rf) if rf_type == "json_schema" else None)
    if ruled is not None:  # filter / multi-label classify: stated rules over the text (filter_answers.py)
        return ruled
    if rf_type == "json_schema":
        spec = rf.get("json_schema") or {}
        schema = spec.get("schema", {"type": "object"}) if isinstance(spec, dict) else {"type": "object"}
        return "json", _dumps(_Gen(schema, digest, user).value(schema))
    if system:
        schema = _schema_from_system(system)
        if schema is not None:
            return "json", _dumps(_Gen(schema, digest, user).value(schema))
        labels = _labels_from(system)
        if labels:
            return "labels", _pick_label(labels, user, digest)
        digest_answer = aggregate_answer(system, user)  # llm_aggregate's steps: a digest of the inputs
        if digest_answer is not None and rf_type != "json_object":
            return "text", digest_answer
    words = _words(user)
    h = int.from_bytes(digest[:8], "big")
    if rf_type == "json_object":
        n = 2 + h % 4
        start = (h >> 8) % len(words)
        text = " ".join(words[(start + i) % len(words)] for i in range(n))
        return "json", _dumps({"answer": text, "score": h % 100})
    n = min(4 + h % 16, len(words))  # plus the "Summary:" word: at most 20 words
    start = (h >> 8) % len(words)
    picked = [words[(start + i) % len(words)] for i in range(n)]
    if n < 4:  # short prompts: pad to 5 words in all
        picked += list(_FALLBACK_WORDS[: 4 - n])
    return "text", "Summary: " + " ".join(picked)


def mistaken_label(model: str, system: str, user: str, answer: str, rate: float, seed: int | None) -> str | None:
    """``--model-error-rate MODEL=RATE``: a share ``rate`` of this model's labels answers is another
    label (chosen, like the share, by a hash of seed, model and prompt: deterministic, different per
    model), so models of known, different error rates can be compared against each other
    (guaranteed cascades, evaluation). None: the answer stands."""
    labels = _labels_from(system) if rate > 0 else None
    if not labels or len(labels) < 2 or answer not in labels:
        return None
    digest = _digest(f"mistake\x00{seed}\x00{model}", system, user)
    if int.from_bytes(digest[:8], "big") / 2 ** 64 >= rate:
        return None
    others = [label for label in labels if label != answer]
    return others[int.from_bytes(digest[8:16], "big") % len(others)]


@lru_cache(maxsize=4096)
def logprobs_for(answer: str, top_n: int = 0, seed: str = "", mistaken: bool = False) -> list[dict]:
    """OpenAI ``logprobs.content``: one entry per 4-character token, logprobs in (-1.5, 0).

    Seeded by ``seed`` (the wire layer passes model + prompt) and the answer, so the same label gets
    a different confidence on different inputs and from different models, as from real ones: a
    cascade on confidence escalates some rows, not all or none, and the bigger model can win.
    ``mistaken`` (a ``mistaken_label`` answer): logprobs in (-2.5, -0.3), so a wrong answer tends to
    have a lower confidence, as a calibrated model's would, with overlap (confidence is a hint)."""
    rng = random.Random(hashlib.sha256((seed + "\x00" + answer).encode("utf-8", "surrogatepass")).digest())
    out = []
    for i in range(0, len(answer), 4):
        token = answer[i: i + 4]
        lp = -round(0.3 + rng.random() * 2.2, 6) if mistaken else -round(0.001 + rng.random() * 1.49, 6)
        entry: dict = {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8", "surrogatepass"))}
        tops = [{"token": token, "logprob": lp, "bytes": entry["bytes"]}]
        for j in range(1, max(0, top_n)):
            alt = f"{token[:1]}~{j}"
            tops.append({"token": alt, "logprob": round(lp - 0.5 * j - 0.4 * rng.random(), 6),
                         "bytes": list(alt.encode("utf-8", "surrogatepass"))})
        entry["top_logprobs"] = tops[: max(0, top_n)]
        out.append(entry)
    return out
