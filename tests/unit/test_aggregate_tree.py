"""The aggregate tree's pure parts (operators/aggregate.py, decision 0037): chunk boundaries are
content-defined (an inserted row changes one chunk, where positional chunks change every later
one), the token budget holds, every level shrinks, bad arguments name themselves, and the
simulator's digest answer counts the rows under a node."""
from __future__ import annotations

import random

import pytest

from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.operators.aggregate import (SYSTEM_PHRASE, check_aggregate_arguments, leaf_chunks, leaf_prompt,
                                            parent_groups, reduce_prompt, row_key, walk_groups)
from dbt_pg_llm.simulator.aggregate_answers import aggregate_answer


def _chunks_as_keys(keys, tokens, budget, chunk_rows):
    return {tuple(keys[i] for i in c) for c in leaf_chunks(keys, tokens, budget, chunk_rows)}


def test_an_inserted_row_changes_only_its_own_chunk():
    rnd = random.Random(3)
    keys = sorted(row_key(None, f"row {i}") for i in range(500))
    changed = []
    for trial in range(50):
        new = row_key(None, f"new {trial}")
        after = sorted(keys + [new])
        before_set = _chunks_as_keys(keys, [10] * len(keys), 10_000, 8)
        after_chunks = _chunks_as_keys(after, [10] * len(after), 10_000, 8)
        changed.append(len(after_chunks - before_set))
        rnd.shuffle(keys)
        keys.sort()
    # one changed chunk, or two when the new row is itself a boundary (it splits its chunk)
    assert max(changed) <= 2 and changed.count(1) >= 40, changed


def test_chunks_cover_every_row_in_order_within_the_budget():
    rnd = random.Random(5)
    keys = sorted(row_key(None, f"r{i}") for i in range(3000))
    tokens = [rnd.randint(5, 120) for _ in keys]
    chunks = leaf_chunks(keys, tokens, 600, 6)
    assert [i for c in chunks for i in c] == list(range(3000))
    assert all(sum(tokens[i] for i in c) <= 600 for c in chunks)
    assert leaf_chunks(["a"], [5000], 600, 6) == [[0]]  # a row over the budget is a chunk of its own


def test_every_parent_takes_two_children_so_each_level_shrinks():
    for n in range(2, 60):
        firsts = [row_key(None, f"c{n}-{i}") for i in range(n)]
        parents = parent_groups(firsts, [50] * n, 1, 10_000, 2)
        assert [i for p in parents for i in p] == list(range(n))
        assert all(len(p) >= 2 for p in parents) and len(parents) < n


def test_walk_counts_a_tree_and_its_estimate_bounds_it():
    rows = {"g": [(row_key(None, f"t{i}"), f"text number {i}") for i in range(200)]}
    rows["g"].sort()
    answers: dict[str, str] = {}

    def lookup(prompts):
        return {p: answers[p] for p in prompts if p in answers}

    def fill(prompts):
        for p in prompts:
            answers[p] = aggregate_answer(SYSTEM_PHRASE, p)

    kw = dict(budget=300, chunk_rows=5, fan_in=3, count=lambda t: (len(t) + 3) // 4)
    estimate = walk_groups(rows, "Summarise", lookup=lookup, **kw)
    done = walk_groups(rows, "Summarise", lookup=lookup, fill=fill, **kw)
    assert " of 200 items: " in done.answers["g"] and done.depth["g"] >= 3
    assert estimate.missing_by_level[0] == done.missing_by_level[0] and done.requested <= estimate.estimate
    assert walk_groups(rows, "Summarise", lookup=lookup, fill=fill, **kw).requested == 0


def test_bad_arguments_name_the_argument_and_the_fix():
    with pytest.raises(ConfigError) as info:
        check_aggregate_arguments({"group_by": "", "text_sql": "body", "instructions": "x", "max_input_tokens": 10,
                                   "fan_in": 1, "schema": "json"})
    text = str(info.value)
    for part in ("group_by: missing", "max_input_tokens: 10 must be a whole number >= 64", "fan_in: 1",
                 "schema: must be a JSON schema mapping"):
        assert part in text, text


def test_simulator_digest_counts_rows_through_the_levels():
    leaf1 = aggregate_answer(SYSTEM_PHRASE, leaf_prompt("S", ["a b", "c d", "e"]))
    leaf2 = aggregate_answer(SYSTEM_PHRASE, leaf_prompt("S", ["f", "g"]))
    root = aggregate_answer(SYSTEM_PHRASE, reduce_prompt("S", [leaf1, leaf2]))
    assert leaf1.endswith("of 3 items: a b") and leaf2.endswith("of 2 items: f")
    assert root.startswith("Digest ") and root.endswith("of 5 items: a b")
    assert aggregate_answer("another system prompt", leaf_prompt("S", ["x"])) is None
