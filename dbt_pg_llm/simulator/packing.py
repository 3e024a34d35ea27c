"""Packed prompts (the engine's ``batch_size > 1``, see dbt_pg_llm/batch.py ``pack_prompt``).

A packed user message reads::

    Answer each of the N numbered inputs below independently, following the instructions. Reply with
    only a JSON array of exactly N answers in input order, <shape>.

    [{"n": 1, "input": "..."}, ...]

The simulator answers it like a model that follows those instructions: a compact JSON array whose
item k is what it would answer input k alone with the same system message (a string for labels and
text, the JSON value for a JSON schema). So a packed run gives the same values as an unpacked one,
with N times fewer requests.
"""
from __future__ import annotations

import json
import re

from . import answers as A

__all__ = ["packed_inputs", "answer"]

_PACKED_RE = re.compile(r"^Answer each of the (\d+) numbered inputs below independently\b")


def packed_inputs(user: str) -> list[str] | None:
    """The inputs of a packed prompt in order, or None when ``user`` is not one (or is garbled)."""
    m = _PACKED_RE.match(user)
    if m is None:
        return None
    head, sep, listing = user.partition("\n\n")
    if not sep:
        return None
    try:
        items = json.loads(listing)
    except ValueError:
        return None
    if not isinstance(items, list) or len(items) != int(m.group(1)):
        return None
    inputs = []
    for k, item in enumerate(items, 1):
        if not isinstance(item, dict) or item.get("n") != k or not isinstance(item.get("input"), str):
            return None
        inputs.append(item["input"])
    return inputs


def answer(system: str, user: str, response_format: str | None = None) -> tuple[str, str]:
    """(mode, answer) like answers.compute_answer, plus mode "packed" for a packed prompt."""
    inputs = packed_inputs(user) if user.startswith("Answer each of the ") else None
    if inputs is None:
        return A.compute_answer(system, user, response_format)
    items = []
    for text in inputs:
        mode, one = A.compute_answer(system, text, response_format)
        items.append(json.loads(one) if mode == "json" else one)
    return "packed", json.dumps(items, ensure_ascii=False, separators=(",", ":"))
