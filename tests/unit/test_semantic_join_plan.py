"""pg_llm.semantic_join's planner (issue 20.4): each plan's calls, the cheapest chosen, bad arguments named."""
from __future__ import annotations

import pytest

from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.operators.semantic_join import PlanCounts, check_join_arguments, choose_plan, pair_prompt

GOOD = {"left_text": "body", "right_text": "name", "left_id": "id", "right_id": "id", "predicate": "Same topic?"}


def test_each_plan_counts_its_calls_and_auto_picks_the_fewest():
    counts = PlanCounts(left_texts=1000, right_texts=50, blocked_pairs=5000, labels=50, label_tokens=400,
                        left_tokens=20_000, right_tokens=300)
    choice = choose_plan(counts)
    assert choice.calls == {"nested": 50_000, "blocked": 5000, "classify": 1000}
    assert choice.chosen == "classify"
    assert choice.ratio("classify") == 50.0 and choice.ratio("blocked") == 10.0
    assert "chosen: classify (cheapest)" in choice.line() and "nested 50000 calls" in choice.line()
    # blocking tighter than one call per left row wins
    assert choose_plan(PlanCounts(1000, 50, blocked_pairs=900, labels=50, label_tokens=400)).chosen == "blocked"


def test_the_right_side_must_fit_as_labels():
    too_many = choose_plan(PlanCounts(10, 500, labels=None), max_labels=100)
    assert too_many.chosen == "nested" and "max_labels=100" in too_many.infeasible["classify"]
    too_long = choose_plan(PlanCounts(10, 20, labels=20, label_tokens=9000), max_label_tokens=4000)
    assert too_long.chosen == "nested" and "9000 tokens" in too_long.infeasible["classify"]
    assert "blocked" in too_long.infeasible
    # one right text, one left text: nested and classify both make 1 call; tokens break the tie
    tie = choose_plan(PlanCounts(1, 1, labels=1, label_tokens=3, left_tokens=10, right_tokens=2))
    assert tie.calls["nested"] == tie.calls["classify"] == 1 and tie.chosen == "classify"


def test_a_requested_plan_is_kept_or_refused_by_name():
    assert choose_plan(PlanCounts(3, 3, labels=3, label_tokens=10), "nested").chosen == "nested"
    with pytest.raises(ConfigError, match="plan: 'classify' is not possible here"):
        choose_plan(PlanCounts(3, 300, labels=None), "classify")


@pytest.mark.parametrize("bad, named", [
    ({"predicate": ""}, "predicate: missing"),
    ({"left_id": None}, "left_id: missing"),
    ({"plan": "hash"}, "plan: 'hash' is not a plan"),
    ({"left_embedding": "emb"}, "left_embedding / right_embedding: give both"),
    ({"plan": "blocked"}, "plan: 'blocked' needs left_embedding"),
    ({"left_embedding": "e", "right_embedding": "e", "candidates": 0}, "candidates: 0"),
    ({"left_embedding": "e", "right_embedding": "e", "min_similarity": 3}, "min_similarity: 3"),
    ({"left_embedding": "e", "right_embedding": "e"}, "candidates / min_similarity"),
    ({"max_labels": -1}, "max_labels: -1"),
])
def test_bad_arguments_name_the_argument(bad, named):
    with pytest.raises(ConfigError) as exc:
        check_join_arguments({**GOOD, **bad})
    assert named in str(exc.value)
    check_join_arguments(GOOD)  # and the good ones pass


def test_the_pair_prompt_frame():
    assert pair_prompt("red apple", "apple pie") == "Left: red apple\nRight: apple pie"
