"""Semantic join: the (left, right) pairs for which the LLM says a predicate holds (issue 20 point 4).

A semantic join is a plan of keyed calls on the one fill (``pg/fill.py`` through ``llm_enrich``):
nothing here requests anything. This module checks the arguments, builds the pair prompt, counts
what each plan would request and picks one (decision 0039):

* ``nested``: one filter call per distinct (left text, right text) pair: ``N x M``.
* ``blocked``: the same filter calls, only over candidate pairs found by embedding similarity (each
  left row's top ``candidates`` right rows, and/or similarity >= ``min_similarity``): ``C`` calls.
* ``classify``: one multi-label classification per distinct left text whose labels are the distinct
  right texts: ``N`` calls, possible only while the right side fits as labels (count and tokens).

``plan='auto'`` takes the plan with the fewest calls, then the fewest prompt tokens. Counts are of
distinct keys whether cached or not, so a warm rerun picks the same plan (and pays nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError

__all__ = ["PLANS", "PlanCounts", "PlanChoice", "check_join_arguments", "choose_plan", "pair_prompt",
           "PAIR_LEFT", "PAIR_RIGHT", "MAX_LABELS", "MAX_LABEL_TOKENS"]

PLANS = ("auto", "nested", "blocked", "classify")
# The pair prompt's frame: the simulator's filter rule reads the two sides from exactly these markers.
PAIR_LEFT = "Left: "
PAIR_RIGHT = "\nRight: "
# The right side fits as labels when it has at most this many distinct texts and their JSON list
# takes at most this many tokens: a small model's context must hold them with room for the answer.
MAX_LABELS = 100
MAX_LABEL_TOKENS = 4000


def pair_prompt(left_text: str, right_text: str) -> str:
    """The text of one pair as the nested / blocked plans send it (the SQL builds the same)."""
    return PAIR_LEFT + left_text + PAIR_RIGHT + right_text


def check_join_arguments(args: Mapping[str, Any]) -> None:
    """Every problem with ``pg_llm.semantic_join``'s arguments, each naming the argument and the fix."""
    problems: list[str] = []
    for name in ("left_text", "right_text", "left_id", "right_id"):
        value = args.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name}: missing; give the column name of the {name.replace('_', ' ')}, "
                            f"e.g. {name}='{'id' if name.endswith('id') else 'body'}'")
    predicate = args.get("predicate")
    if not isinstance(predicate, str) or not predicate.strip():
        problems.append("predicate: missing; give the question asked of each pair as text, e.g. "
                        "predicate='Does the review mention the product?'")
    plan = args.get("plan", "auto")
    if plan not in PLANS:
        problems.append(f"plan: {plan!r} is not a plan; use one of {', '.join(PLANS)}")
    left_emb, right_emb = args.get("left_embedding"), args.get("right_embedding")
    if (left_emb is None) != (right_emb is None):
        problems.append("left_embedding / right_embedding: give both embedding columns (to block candidate "
                        "pairs by similarity) or neither")
    if plan == "blocked" and (left_emb is None or right_emb is None):
        problems.append("plan: 'blocked' needs left_embedding and right_embedding (the columns to block on)")
    candidates = args.get("candidates")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                   or candidates < 1):
        problems.append(f"candidates: {candidates!r} must be a whole number >= 1 (right rows per left row), "
                        "e.g. candidates=10")
    min_similarity = args.get("min_similarity")
    if min_similarity is not None and (isinstance(min_similarity, bool)
                                       or not isinstance(min_similarity, (int, float))
                                       or not -1 <= min_similarity <= 1):
        problems.append(f"min_similarity: {min_similarity!r} must be a cosine similarity from -1 to 1, e.g. 0.5")
    if left_emb is not None and candidates is None and min_similarity is None:
        problems.append("candidates / min_similarity: blocking by embeddings needs candidates=<k> and/or "
                        "min_similarity=<cosine>")
    max_labels = args.get("max_labels", MAX_LABELS)
    if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 0:
        problems.append(f"max_labels: {max_labels!r} must be a whole number >= 0 (0 never rewrites as classify)")
    if problems:
        raise ConfigError(problems, context="pg_llm.semantic_join")


@dataclass(frozen=True)
class PlanCounts:
    """What the inputs hold, counted by SQL: distinct non-NULL texts of each side, the distinct
    candidate text pairs of the blocked plan (None: no embeddings), the right side's distinct texts
    (None: more than fit as labels) and token sums used to compare plans of equal calls."""

    left_texts: int
    right_texts: int
    blocked_pairs: int | None = None
    left_tokens: int = 0  # tokens of all distinct left texts
    right_tokens: int = 0  # tokens of all distinct right texts
    blocked_tokens: int = 0  # tokens of the blocked plan's pair texts
    labels: int | None = None  # distinct blank-trimmed non-empty right texts (None: more than max_labels)
    label_tokens: int = 0  # tokens of those texts as a JSON list of labels


@dataclass
class PlanChoice:
    """Each feasible plan's calls and prompt tokens, the plan chosen and why."""

    calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    chosen: str = "nested"
    requested: str = "auto"
    infeasible: dict[str, str] = field(default_factory=dict)  # plan -> why it cannot be used

    def ratio(self, plan: str) -> float | None:
        """How many times fewer calls than nested ``plan`` makes."""
        if plan not in self.calls or not self.calls[plan]:
            return None
        return self.calls["nested"] / self.calls[plan]

    def line(self) -> str:
        parts = []
        for plan in ("nested", "blocked", "classify"):
            if plan in self.calls:
                ratio = self.ratio(plan)
                parts.append(f"{plan} {self.calls[plan]} calls (~{self.tokens[plan]} prompt tokens"
                             + (f", {ratio:.1f}x fewer than nested" if plan != "nested" and ratio else "") + ")")
            elif plan in self.infeasible:
                parts.append(f"{plan} not possible ({self.infeasible[plan]})")
        how = "cheapest" if self.requested == "auto" else "requested"
        return f"semantic join plans: {'; '.join(parts)}; chosen: {self.chosen} ({how})"

    def as_dict(self) -> dict:
        return {"calls": dict(self.calls), "tokens": dict(self.tokens), "chosen": self.chosen,
                "requested": self.requested, "infeasible": dict(self.infeasible), "line": self.line()}


def choose_plan(counts: PlanCounts, requested: str = "auto", max_labels: int = MAX_LABELS,
                max_label_tokens: int = MAX_LABEL_TOKENS, predicate_tokens: int = 0) -> PlanChoice:
    """Count each plan's calls (distinct keys) and prompt tokens; pick ``requested`` or, for
    ``auto``, the fewest calls then the fewest tokens (ties: nested, blocked, classify in that order).
    A requested plan that is not possible is a ConfigError naming ``plan`` and why."""
    n, m = counts.left_texts, counts.right_texts
    choice = PlanChoice(requested=requested)
    frame = len(pair_prompt("", "")) // 4 + 1
    choice.calls["nested"] = n * m
    choice.tokens["nested"] = counts.left_tokens * m + counts.right_tokens * n + n * m * (frame + predicate_tokens)
    if counts.blocked_pairs is not None:
        choice.calls["blocked"] = counts.blocked_pairs
        choice.tokens["blocked"] = counts.blocked_tokens + counts.blocked_pairs * (frame + predicate_tokens)
    else:
        choice.infeasible["blocked"] = "no embedding columns given"
    if counts.labels is None or counts.labels > max_labels:
        choice.infeasible["classify"] = f"more than max_labels={max_labels} distinct right texts"
    elif counts.label_tokens > max_label_tokens:
        choice.infeasible["classify"] = (f"the right texts take ~{counts.label_tokens} tokens as labels, more "
                                         f"than {max_label_tokens}")
    elif counts.labels == 0:
        choice.infeasible["classify"] = "the right side has no non-blank text"
    else:
        choice.calls["classify"] = n
        choice.tokens["classify"] = counts.left_tokens + n * (counts.label_tokens + predicate_tokens)
    if requested == "auto":
        choice.chosen = min(choice.calls, key=lambda p: (choice.calls[p], choice.tokens[p]))
    elif requested in choice.calls:
        choice.chosen = requested
    else:
        raise ConfigError([f"plan: {requested!r} is not possible here: {choice.infeasible.get(requested)}; "
                           "use plan='auto' or another plan"], context="pg_llm.semantic_join")
    return choice
