"""pg_llm.top_k's pure parts (decision 0038): argument checks naming each argument, the strict
parse of a window's answer, the request count formula, and the tournament returning the global
top-k of any total order (the lookup / fill here are plain functions: no transport involved)."""
from __future__ import annotations

import json
import random

import pytest

from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.operators.top_k import (InvalidRanking, check_top_k_arguments, parse_ranking, rank_prompt,
                                        requests_for, walk_partitions)

GOOD = {"partition_by": "product_id", "text_sql": "body", "query": "broken strap", "k": 3, "id_column": "id"}


@pytest.mark.parametrize("change, named", [
    ({"k": 0}, "k: 0 must be a whole number >= 1"),
    ({"k": None}, "k: None must be"),
    ({"query": None}, "query: missing"),
    ({"query": "  "}, "query: missing"),
    ({"partition_by": None}, "partition_by: missing"),
    ({"window": 3}, "window: 3 must be larger than k=3"),
    ({"candidates": 9}, "candidates: only used with embedding_column"),
])
def test_bad_arguments_name_the_argument(change, named):
    check_top_k_arguments(GOOD)
    with pytest.raises(ConfigError, match="pg_llm.top_k") as info:
        check_top_k_arguments({**GOOD, **change})
    assert named in str(info.value)


@pytest.mark.parametrize("answer", ['{"ranking": [1, 1, 2]}', '{"ranking": [1, 2]}', '{"ranking": [1, 2, 6]}',
                                    '{"ranking": [0, 1, 2]}', '{"ranking": [1, 2, true]}', '{"rank": [1, 2, 3]}',
                                    '[1, 2, 3]', 'not json', None])
def test_a_window_answer_must_be_m_distinct_numbers_of_the_window(answer):
    assert parse_ranking('{"ranking": [3, 1, 5]}', 5, 3) == [2, 0, 4]
    with pytest.raises(InvalidRanking):
        parse_ranking(answer, 5, 3)


@pytest.mark.parametrize("n, window, k, want", [(0, 20, 5, 0), (1, 20, 5, 0), (2, 20, 5, 1), (20, 20, 5, 1),
                                                (21, 20, 5, 2), (100, 20, 5, 7), (1000, 20, 5, 67),
                                                (46, 8, 4, 11)])
def test_requests_formula(n, window, k, want):
    assert requests_for(n, window, k) == want
    assert requests_for(n, window, k) <= n / (window - k) + 2


def test_tournament_returns_the_global_top_k_and_asks_each_window_once():
    rng = random.Random(7)
    score = {}
    parts = {p: [(f"{p}-{i:03d}", f"text {p} {i}") for i in range(n)] for p, n in (("a", 137), ("b", 5), ("c", 1))}
    for rows in parts.values():
        for _, text in rows:
            score[text] = rng.randint(0, 9)  # many ties: broken by the window position (id order)
    asked, cache = [], {}

    def answer(prompt):
        m = int(prompt.split("Pick the ", 1)[1].split(" ", 1)[0])
        lines = prompt.split("):\n", 1)[1].splitlines()
        texts = [line.split("] ", 1)[1] for line in lines]
        order = sorted(range(len(texts)), key=lambda i: (-score[texts[i]], i))[:m]
        return json.dumps({"ranking": [i + 1 for i in order]})

    def fill(prompts):
        asked.extend(prompts)
        cache.update({p: answer(p) for p in prompts})

    result = walk_partitions(parts, "q", 4, window=10, lookup=lambda ps: {p: cache[p] for p in ps if p in cache},
                             fill=fill)
    for p, rows in parts.items():
        want = [i for i, t in sorted(rows, key=lambda r: (-score[r[1]], r[0]))[:4]]
        assert result.ranked[p] == want
    assert len(asked) == len(set(asked)) == requests_for(137, 10, 4) + requests_for(5, 10, 4)
    estimate = walk_partitions(parts, "q", 4, window=10, lookup=lambda ps: {})  # nothing cached, no fill
    assert estimate.estimate == len(asked)
    assert rank_prompt("q", ["a\nb"], 1).endswith("[1] a b")  # one line per candidate
