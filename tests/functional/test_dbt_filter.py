"""pg_llm.filter and classify(multi_label=true) through dbt (issue 20.1), on the simulator's stated rules
(simulator/filter_answers.py): filter is true iff the text has a content word of the question; multi-label
lists every label occurring in the text, in label order. 24 rows over 4 distinct texts."""
from __future__ import annotations

import json
import re

import pytest
from dbt_harness import one_model_project

pytestmark = pytest.mark.functional

TEXTS = {0: "Shipping was slow and the battery died", 1: "Great screen, fair price", 2: "Nothing to say",
         3: "The screen cracked"}
EXPECTED = {0: (True, ["battery", "shipping"]), 1: (False, ["screen", "price"]), 2: (False, []),
            3: (False, ["screen"])}
MODEL = """
{{ pg_llm.llm_enrich(
    "select i as id, case i % 4 when 0 then 'Shipping was slow and the battery died' when 1 then 'Great screen, "
    ~ "fair price' when 2 then 'Nothing to say' else 'The screen cracked" ~ var('marker', '') ~ "' end as body "
    ~ "from generate_series(1, 24) i order by i " ~ var('order', 'asc'),
    {'ships': pg_llm.filter('body', var('q', 'Does the review mention shipping?'), batch_size=var('bs', none)),
     'topics': pg_llm.classify('body', labels=var('labels', ['battery', 'screen', 'price', 'shipping']),
                               multi_label=var('ml', true), batch_size=var('bs', none))},
    on_error=var('on_error', none), mode=var('mode', none)) }}
"""
DOWNSTREAM = "select id, ships__confidence from {{ ref('tagged_reviews') }} where ships\n"


@pytest.fixture
def filter_project(pg, simulator, tmp_path):
    simulator.reset()
    for project in one_model_project(tmp_path, pg, simulator.base_url, "filter_project", "tagged_reviews", MODEL,
                                     "flt", LLM_TOKENIZER="simulator"):
        (project.path / "models" / "shipping_reviews.sql").write_text(DOWNSTREAM)
        yield project


def _rows(project):
    return project.query(f'select id, ships, ships__confidence, topics from "{project.schema}".tagged_reviews '
                         "order by id")


def test_filter_and_multi_label_values_keys_warm_and_downstream_where(filter_project, simulator):
    project = filter_project
    project.run("run")
    assert simulator.stats()["requests"] == 2 * len(TEXTS)  # one per distinct text and column
    rows = _rows(project)
    assert len(rows) == 24
    for id_, ships, confidence, topics in rows:
        assert (ships, topics) == EXPECTED[id_ % 4]
        assert isinstance(ships, bool) and 0 < confidence <= 1
    types = dict(project.query("select column_name, data_type from information_schema.columns "
                               f"where table_schema = '{project.schema}' and table_name = 'tagged_reviews'"))
    assert types["ships"] == "boolean" and types["ships__confidence"] == "double precision"
    assert types["topics"] == "ARRAY"
    downstream = project.query(f'select id from "{project.schema}".shipping_reviews order by id')
    assert [r[0] for r in downstream] == [i for i in range(1, 25) if i % 4 == 0]
    calls = project.scalar(f'select count(*) from "{project.audit}".llm_calls where not cached')
    assert calls == project.scalar(f'select sum(requests) from "{project.audit}".llm_runs') == 2 * len(TEXTS)
    # warm, and the source in the other order: the same keys, nothing paid, the same values
    simulator.reset()
    project.run("run", "--vars", json.dumps({"order": "desc"}))
    assert simulator.stats()["requests"] == 0 and _rows(project) == rows
    # the question is in the filter's key (and only the filter's): a new question pays its texts once
    project.run("run", "--vars", json.dumps({"q": "Is the battery mentioned?"}))
    assert simulator.stats()["requests"] == len(TEXTS)
    assert {i % 4 for i, ships, _, _ in _rows(project) if ships} == {0}  # 'battery' only in text 0


def test_filter_estimate_and_packed_requests(filter_project, simulator):
    project = filter_project
    out = project.run("compile", "--select", "tagged_reviews", "--vars", json.dumps({"pg_llm_estimate": True}))
    lines = [line for line in out.text.splitlines() if "pg_llm estimate:" in line]
    assert any(".ships:" in line and f"{len(TEXTS)} of {len(TEXTS)} distinct keys uncached" in line
               for line in lines), out.text[-3000:]
    assert any(".topics:" in line for line in lines) and simulator.stats()["requests"] == 0
    total = float(re.search(r"selection total so far \$([0-9.]+)", lines[-1]).group(1))
    project.run("run", "--vars", json.dumps({"bs": 4}))  # packed: 4 texts per request, per column
    assert simulator.stats()["requests"] == 2
    assert [(ships, topics) for id_, ships, _, topics in _rows(project)] == \
        [EXPECTED[i % 4] for i in range(1, 25)]
    paid = float(project.scalar(f'select coalesce(sum(cost_usd), 0) from "{project.audit}".llm_calls'))
    assert paid <= total + 1e-4


def test_failing_text_is_null_with_a_dead_letter_and_on_error_fail_fails(filter_project, simulator):
    project = filter_project
    marker = json.dumps({"marker": " [[fault:400]]"})
    project.run("run", "--vars", marker)
    for id_, ships, confidence, topics in _rows(project):
        if id_ % 4 == 3:
            assert ships is None and confidence is None and topics is None
        else:
            assert (ships, topics) == EXPECTED[id_ % 4]
    dead = project.query(f'select column_name, error_kind from "{project.audit}".llm_errors order by 1')
    assert dead == [("ships", "invalid_input"), ("topics", "invalid_input")]
    out = project.run("run", "--vars", json.dumps({"marker": " [[fault:400]]", "on_error": "fail"}), expect=False)
    assert "invalid_input" in out.text


def test_batch_mode_submits_then_collects_the_same_values(filter_project, simulator):
    project = filter_project
    project.run("run", "--vars", json.dumps({"mode": "batch"}), LLM_BATCH_MIN_KEYS="1")
    stats = simulator.stats()
    assert stats["batches_created"] >= 1 and stats["requests"] == 0
    project.run("run", "--vars", json.dumps({"mode": "batch"}), LLM_BATCH_MIN_KEYS="1")  # collects
    assert [(ships, topics) for id_, ships, _, topics in _rows(project)] == \
        [EXPECTED[i % 4] for i in range(1, 25)]
    stats = simulator.stats()
    assert stats["requests"] == 0 and stats["batch_requests"] == 2 * len(TEXTS)
    assert all(0 < c <= 1 for _, ships, c, _ in _rows(project))  # the filter's confidence survives a batch


@pytest.mark.parametrize("bad, needle", [({"q": ""}, "`question`"), ({"labels": "battery"}, "`labels`"),
                                         ({"ml": "yes"}, "`multi_label`")])
def test_bad_arguments_are_compile_errors_naming_them(filter_project, simulator, bad, needle):
    out = filter_project.run("compile", "--select", "tagged_reviews", "--vars", json.dumps(bad), expect=False)
    assert needle in out.text, out.text[-2000:]
    assert simulator.stats()["requests"] == 0
