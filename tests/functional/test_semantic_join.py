"""Issue 20.4: pg_llm.semantic_join through real dbt runs on the simulator (real HTTP, real Postgres).

The simulator's predicate rule (simulator/filter_answers.py: a filter over the pair prompt, and a
multi-label classify of the left text whose labels are the right texts) is: the (blank-trimmed)
right text occurs as a whole-word phrase in the left text, case-insensitively. So every plan must
return exactly the rule's pairs (the blocked plan: those among its candidates), the nested and the
classify plans the SAME pairs, each paying its own count of calls, a warm rerun nothing.
"""
from __future__ import annotations

import math
import re
import shutil
import uuid

import pytest

from tests.functional.dbt_harness import INTEGRATION, DbtProject

pytestmark = pytest.mark.functional

LEFT = [(1, "red apple pie", [1, 0, 0]), (2, "kernel scheduler bug", [0, 1, 0]), (3, "apple crumble recipe", [0.2, 0, 1]),
        (4, "fresh Banana Bread loaf", [0, 0, 1]), (5, None, [1, 1, 0]), (6, "red apple pie", [1, 0, 0]),
        (7, "quiet evening walk", [1, 1, 1])]
RIGHT = [(1, "apple", [1, 0.1, 0]), (2, "kernel", [0, 1, 0.1]), (3, "bread", [0, 0.1, 1]), (4, "apple", [1, 0.1, 0]),
         (5, "  banana bread ", [0.1, 0, 1]), (6, None, [1, 0, 1])]
EXTRA = (8, "warm apple cider", [1, 0, 0.1])
PREDICATE = "Are these two about the same thing?"


def _holds(left_text, right_text):
    phrase = right_text.strip().casefold()
    return bool(phrase) and re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", left_text.casefold()) is not None


def _rule_pairs(left, right):
    return {(lid, rid) for lid, lt, _ in left for rid, rt, _ in right
            if lt is not None and rt is not None and _holds(lt, rt)}


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _top(left, right, k):
    return {(lid, rid) for lid, _, lv in left
            for rid in sorted((r[0] for r in right), key=lambda rid: (round(1 - _cos(lv, right[rid - 1][2]), 9), rid))[:k]}


def _values(rows, extra_var=None):
    def row(i, t, v):
        return f"({i}, {'null' if t is None else repr(t)}::text, '{{{','.join(map(str, v))}}}'::real[])"
    sql = "{{ config(materialized='table') }}\nselect * from (values " + ", ".join(row(*r) for r in rows)
    if extra_var:
        sql += "{% if var('" + extra_var + "', false) %}, " + row(*EXTRA) + "{% endif %}"
    return sql + ") as t(id, body, emb)"


def _join(plan, extra="", predicate=PREDICATE):
    return ("{{ config(materialized='table') }}\n{{ pg_llm.semantic_join(ref('sj_left'), ref('sj_right'), 'body', 'body', "
            f"'{predicate}', left_id='id', right_id='id', plan='{plan}'{extra}) }}}}")


MODELS = {
    "sj_left.sql": _values(LEFT, "sj_extra"),
    "sj_right.sql": _values(RIGHT),
    "sj_nested.sql": _join("nested"),
    "sj_classify.sql": _join("classify"),
    "sj_auto.sql": _join("auto"),
    # its own predicate: keys of its own (the same pairs as nested would otherwise be paid by either)
    "sj_blocked.sql": _join("blocked", ", left_embedding='emb', right_embedding='emb', candidates=2",
                            "Do these two share a subject?"),
    # a failing request: the left text asks the simulator for a 400 (not retried)
    "sj_faulty.sql": "{{ config(materialized='table') }}\n{{ pg_llm.semantic_join(\"select * from (values (1, 'apple tart'), "
                     "(2, 'broken apple [[fault:400]]'), (3, 'kernel update')) as t(id, body)\", ref('sj_right'), 'body', 'body', "
                     f"'{PREDICATE}', left_id='id', right_id='id', plan='nested') }}}}",
}
MODELS["sj_faulty_fail.sql"] = MODELS["sj_faulty.sql"].replace("plan='nested'", "plan='nested', on_error='fail'")
JOINS = ["sj_nested", "sj_classify", "sj_auto", "sj_blocked"]


@pytest.fixture(scope="module")
def sj(pg, simulator, tmp_path_factory):
    path = tmp_path_factory.mktemp("sj_project")
    (path / "models").mkdir()
    shutil.copy(INTEGRATION / "profiles.yml", path / "profiles.yml")
    (path / "dbt_project.yml").write_text("name: sj_project\nversion: '1.0.0'\nconfig-version: 2\n"
                                          "profile: pg_llm_integration\n")
    for name, text in MODELS.items():
        (path / "models" / name).write_text(text)
    proj = DbtProject(path, pg, simulator.base_url, schema=f"sj_{uuid.uuid4().hex[:8]}")
    proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_sj_{uuid.uuid4().hex[:8]}", "LLM_JOURNAL_DIR": str(path / "journal")}
    proj.run_out = proj.run("run", "--exclude", "sj_faulty", "sj_faulty_fail")
    yield proj
    from dbt.adapters.pg_llm.engines import close_engines

    close_engines()
    for schema in (proj.schema, proj.llm_env["LLM_AUDIT_SCHEMA"]):
        proj.query(f'drop schema if exists "{schema}" cascade')


def _pairs(proj, model):
    return set(proj.query(f'select id, right_id from "{proj.schema}".{model}'))


def _calls(proj, model):
    return proj.scalar(f'select count(*) from "{proj.llm_env["LLM_AUDIT_SCHEMA"]}".llm_calls where node_id = %s '
                       "and not cached",
                       (f"model.sj_project.{model}",))


def _distinct(rows):
    return len({t for _, t, _ in rows if t is not None})


def test_each_plan_returns_the_rule_pairs(sj):
    want = _rule_pairs(LEFT, RIGHT)
    assert (1, 1) in want and (1, 4) in want and (4, 5) in want and (6, 1) in want  # duplicates, blanks kept
    assert _pairs(sj, "sj_nested") == want
    assert _pairs(sj, "sj_classify") == want  # the rewrite gives the SAME pairs as nested
    assert _pairs(sj, "sj_auto") == want
    blocked = _pairs(sj, "sj_blocked")
    assert blocked == want & _top(LEFT, RIGHT, 2) and blocked != want  # only candidates are asked
    def cols(table):
        return [r[0] for r in sj.query("select column_name from information_schema.columns where table_schema = %s "
                                       "and table_name = %s order by ordinal_position", (sj.schema, table))]
    assert cols("sj_nested") == ["id", "body", "emb", "right_id", "right_body", "right_emb"]
    assert cols("sj_classify") == cols("sj_nested")
    assert cols("sj_blocked") == ["id", "body", "right_id", "right_body"]  # the embeddings it blocked on: left out


def test_each_plan_pays_its_calls_and_auto_picks_the_cheaper(sj):
    n, m = _distinct(LEFT), _distinct(RIGHT)
    assert _calls(sj, "sj_nested") == n * m  # one filter call per distinct text pair: 5 x 4
    # one multi-label call per distinct left text; auto chose classify: the same keys, paid once by
    # whichever of the two (run in parallel) claimed them first
    assert _calls(sj, "sj_classify") + _calls(sj, "sj_auto") == n
    line = f"nested {n * m} calls"
    assert any(line in m_ and f"classify {n} calls" in m_ and "chosen: classify (cheapest)" in m_
               for m_ in sj.run_out.text.splitlines() if "sj_auto" in m_), sj.run_out.text[-3000:]
    pairs = {(lt, rt) for lid, lt, _ in LEFT for rid, rt, _ in RIGHT if (lid, rid) in _top(LEFT, RIGHT, 2) and lt and rt}
    assert _calls(sj, "sj_blocked") == len(pairs) < n * m  # only the distinct candidate text pairs


def test_a_warm_rerun_pays_nothing_and_a_new_left_row_pays_only_its_calls(sj):
    before = {m: _calls(sj, m) for m in JOINS}
    sj.run("run", "--exclude", "sj_faulty", "sj_faulty_fail")
    assert {m: _calls(sj, m) for m in JOINS} == before
    sj.run("run", "--exclude", "sj_faulty", "sj_faulty_fail", "--vars", "{sj_extra: true}")
    assert _calls(sj, "sj_nested") - before["sj_nested"] == _distinct(RIGHT)  # the new text x each right text
    assert _calls(sj, "sj_classify") + _calls(sj, "sj_auto") - before["sj_classify"] - before["sj_auto"] == 1
    assert _pairs(sj, "sj_classify") == _pairs(sj, "sj_nested") == _rule_pairs(LEFT + [EXTRA], RIGHT)


def test_a_failing_request_gives_no_pair_and_a_dead_letter(sj):
    out = sj.run("run", "-s", "sj_faulty")
    # 'apple tart' x the two 'apple' rows, 'kernel update' x 'kernel'; the broken row: none
    assert _pairs(sj, "sj_faulty") == {(1, 1), (1, 4), (3, 2)}
    audit = sj.llm_env["LLM_AUDIT_SCHEMA"]
    dead = sj.scalar(f'select count(*) from "{audit}".llm_errors where node_id = %s', ("model.sj_project.sj_faulty",))
    assert dead == _distinct(RIGHT)  # each pair of the broken text
    assert any("key(s) failed" in w for w in out.warnings), out.warnings
    failed = sj.run("run", "-s", "sj_faulty_fail", expect=False)  # on_error='fail': the model fails, naming it
    assert "sj_faulty_fail.pg_llm_holds" in failed.text and "on_error is 'fail'" in failed.text, failed.text[-2000:]


@pytest.mark.parametrize("call, named", [
    ("ref('sj_left'), ref('sj_right'), 'body', 'body', '', left_id='id', right_id='id'", "predicate: missing"),
    ("ref('sj_left'), ref('sj_right'), 'body', 'body', 'p?', right_id='id'", "left_id: missing"),
    ("ref('sj_left'), ref('sj_right'), 'body', 'body', 'p?', left_id='id', right_id='id', plan='blocked'",
     "plan: 'blocked' needs left_embedding"),
    ("ref('sj_left'), ref('sj_right'), 'nope', 'body', 'p?', left_id='id', right_id='id'",
     "left_text='nope' is not a column of the left relation (its columns: id, body, emb)"),
    ("ref('sj_left'), ref('sj_right'), 'body', 'body', 'p?', left_id='id', right_id='id', plan='classify', max_labels=2",
     "plan: 'classify' is not possible here: more than max_labels=2"),
])
def test_bad_arguments_are_compile_errors_naming_the_argument(sj, call, named):
    out = sj.run("compile", "--inline", "{{ pg_llm.semantic_join(" + call + ") }}", expect=False)
    assert named in out.text, out.text[-2000:]


def test_estimate_mode_logs_each_plans_calls_and_prices_the_chosen_one(sj):
    out = sj.run("compile", "-s", "sj_nested", "sj_auto", "--vars", "{pg_llm_estimate: true}")
    n = sj.scalar(f'select count(distinct body) from "{sj.schema}".sj_left')  # EXTRA too, after the test above
    m = _distinct(RIGHT)
    assert f"model.sj_project.sj_auto: semantic join plans: nested {n * m} calls" in out.text
    assert f"classify {n} calls" in out.text and "blocked not possible (no embedding columns given)" in out.text
    assert f"sj_nested.pg_llm_holds: sim: 0 of {n * m} distinct keys uncached" in out.text, out.text[-3000:]


def test_compile_before_the_inputs_exist_renders_the_join(sj):
    out = sj.run("compile", "-s", "sj_nested", "sj_blocked", DBT_SCHEMA=f"sj_none_{uuid.uuid4().hex[:6]}")
    compiled = next((sj.path / "target" / "compiled").rglob("sj_blocked.sql")).read_text()
    assert "cross join lateral" in compiled and "pg_llm_holds" in compiled, out.text[-2000:]


def test_a_non_text_column_is_joined_as_its_text(sj):
    # right_text an integer column: counted, labelled and compared as text (octet_length(integer) failed before)
    out = sj.run("compile", "--inline", "{{ pg_llm.semantic_join(ref('sj_left'), ref('sj_right'), 'body', 'id', "
                 "'p?', left_id='id', right_id='id') }}")
    assert "semantic join plans: nested" in out.text and "chosen: classify" in out.text, out.text[-2000:]
