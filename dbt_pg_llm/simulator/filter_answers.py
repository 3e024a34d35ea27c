"""The simulator's answers to filter and multi-label classify prompts (``pg/spec.py``): stated rules.

Both are matched as whole words, case-insensitively (``\\w`` boundaries), so tests can assert results:

* FILTER (system message holds ``FILTER_PHRASE`` followed by the condition): the answer is ``true``
  iff the text contains one of the condition's *content words* (words of 4+ characters that are not
  in ``STOPWORDS``), else ``false``. A pair text ``Left: <a>\\nRight: <b>`` (semantic_join's pair
  prompt) is ``true`` iff ``<b>`` occurs as a phrase in ``<a>``: the multi-label rule below with
  ``<b>`` as a label, so the join's nested and classify plans agree.
* MULTI-LABEL (``MULTI_LABEL_PHRASE`` followed by the labels as a JSON list): ``{"labels": [...]}``
  with every label occurring as a phrase in the text, in label order; none: ``[]``.

Answered as labels (``true`` / ``false``, or ``{"label": ...}`` when the labels came as an enum
schema), so their logprob confidence is the one every label answer gets (``answers.logprobs_for``).
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..operators.semantic_join import PAIR_LEFT, PAIR_RIGHT
from ..pg.spec import FILTER_PHRASE, MULTI_LABEL_PHRASE

__all__ = ["rule_answer", "filter_holds", "labels_in", "content_words", "STOPWORDS"]

STOPWORDS = frozenset("""about above after again also among anything been being both could does doing each
every from have having here into just mention mentioned mentions more most much only other over review reviews
said same says should some such text than that their them then there these they this those through very what
when where whether which while will with would your""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def content_words(question: str) -> list[str]:
    """The words of ``question`` the filter rule looks for (casefolded, in order, each once)."""
    seen: list[str] = []
    for word in _WORD.findall(question.casefold()):
        if len(word) >= 4 and word not in STOPWORDS and word not in seen:
            seen.append(word)
    return seen


def _has_phrase(text: str, phrase: str) -> bool:
    phrase = phrase.strip().casefold()
    return bool(phrase) and re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text.casefold()) is not None


def filter_holds(question: str, text: str) -> bool:
    """The filter rule (module doc)."""
    if text.startswith(PAIR_LEFT) and PAIR_RIGHT in text:
        left, right = text[len(PAIR_LEFT):].split(PAIR_RIGHT, 1)
        return _has_phrase(left, right)
    words = set(_WORD.findall(text.casefold()))
    return any(word in words for word in content_words(question))


def labels_in(labels: list[str], text: str) -> list[str]:
    """The multi-label rule (module doc): the labels occurring in ``text``, in label order."""
    return [label for label in labels if _has_phrase(text, label)]


def _listed_labels(system: str, start: int) -> list[str] | None:
    try:
        listed, _ = json.JSONDecoder().raw_decode(system, start)
    except json.JSONDecodeError:
        return None
    return listed if isinstance(listed, list) and all(isinstance(x, str) for x in listed) else None


def rule_answer(system: str, user: str, structured: Any = None) -> tuple[str, str] | None:
    """``(mode, answer)`` as ``answers.compute_answer`` returns it, or None (not one of these prompts).
    ``structured``: the request's JSON schema when it sent one (labels as an enum ``{"label": ...}``)."""
    if not system:
        return None
    idx = system.find(FILTER_PHRASE)
    if idx >= 0:
        label = "true" if filter_holds(system[idx + len(FILTER_PHRASE):], user) else "false"
        props = structured.get("properties") if isinstance(structured, dict) else None
        if isinstance(props, dict) and "label" in props:
            return "json", json.dumps({"label": label}, separators=(",", ":"))
        return "labels", label
    idx = system.find(MULTI_LABEL_PHRASE)
    if idx >= 0:
        labels = _listed_labels(system, idx + len(MULTI_LABEL_PHRASE))
        if labels is not None:
            return "json", json.dumps({"labels": labels_in(labels, user)}, ensure_ascii=False,
                                      separators=(",", ":"))
    return None
