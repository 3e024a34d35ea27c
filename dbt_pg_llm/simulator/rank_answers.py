"""The simulator's answer to a top-k window (``operators/top_k.py``): rank by word overlap.

Each candidate scores the number of distinct words (lower case, ``\\w+``) it shares with the query;
the answer is ``{"ranking": [...]}``, the ``m`` best numbers by score, ties by number (the id
order), so tests can compute the expected top-k. A candidate containing ``[[rank:invalid]]`` makes
the answer name a number outside the window (an invalid answer the operator must reject).
"""
from __future__ import annotations

import json
import re

from ..operators.top_k import CANDIDATES_HEADER, RANK_PHRASE

__all__ = ["rank_answer", "overlap"]

_HEADER = re.compile(r"^" + re.escape(CANDIDATES_HEADER) + r" \((\d+)\):$", re.M)
_PICK = re.compile(r"^Pick the (\d+) best candidates", re.M)
_QUERY = re.compile(r"^Query: (.*)$", re.M)
_LINE = re.compile(r"^\[(\d+)\] (.*)$", re.M)
_WORD = re.compile(r"\w+")


def overlap(query: str, text: str) -> int:
    """Distinct words ``text`` shares with ``query`` (the simulator's relevance)."""
    return len(set(_WORD.findall(query.lower())) & set(_WORD.findall(text.lower())))


def rank_answer(system: str, user: str) -> str | None:
    """The ranking JSON when ``system`` holds the top-k phrase, else None (not a top-k window)."""
    if not system or RANK_PHRASE not in system:
        return None
    header, pick, query = _HEADER.search(user), _PICK.search(user), _QUERY.search(user)
    if header is None or pick is None or query is None:
        return None
    lines = [(int(n), t) for n, t in _LINE.findall(user[header.end():])]
    m = int(pick.group(1))
    best = sorted(lines, key=lambda nt: (-overlap(query.group(1), nt[1]), nt[0]))[:m]
    ranking = [n for n, _ in best]
    if any("[[rank:invalid]]" in t for _, t in lines):
        ranking[-1] = len(lines) + 1
    return json.dumps({"ranking": ranking}, separators=(",", ":"))
