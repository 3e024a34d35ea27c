"""pg_llm.llm_aggregate through dbt (issue 20.2): the macro's model on the example profile: one row
per group (text, and jsonb with schema=), the estimate logged by `dbt compile` bounds the run, and a
warm rerun pays nothing."""
from __future__ import annotations

import json
import re

import pytest
from dbt_harness import one_model_project

pytestmark = pytest.mark.functional

SOURCE = ("select i as id, 'p' || (i % 3) as product, 'review ' || i || ' of p' || (i % 3) || ': the lid '"
          " || case when i % 2 = 0 then 'leaks' else 'cracked' end as body from generate_series(1, 120) i")
MODEL = """
select t.product, t.answer, j.facts
from {{ pg_llm.llm_aggregate("%s", 'product', 'body', 'Summarise the complaints', order_by='id',
                             max_input_tokens=400, max_tokens=40, alias='t') }}
join {{ pg_llm.llm_aggregate("%s", 'product', 'body', 'List the complaints', max_input_tokens=400,
                             schema={'type': 'object', 'properties': {'complaints': {'type': 'array',
                                     'items': {'type': 'string'}}}, 'required': ['complaints']},
                             answer_column='facts', alias='j') }} using (product)
""" % (SOURCE, SOURCE)


@pytest.fixture
def agg_project(pg, simulator, tmp_path):
    simulator.reset()
    yield from one_model_project(tmp_path, pg, simulator.base_url, "aggregate_project", "complaints", MODEL, "agg")


def test_dbt_llm_aggregate_one_row_per_group_estimate_and_warm_rerun(agg_project, simulator):
    project = agg_project
    # compile before the inputs exist (an upstream model not built yet): rendered, nothing requested
    (project.path / "models" / "upstream.sql").write_text(SOURCE)
    (project.path / "models" / "downstream.sql").write_text(
        "select * from {{ pg_llm.llm_aggregate(ref('upstream'), 'product', 'body', 'Summarise') }}")
    out = project.run("compile", "--select", "downstream")
    assert "the answers are not looked up (UndefinedTable" in out.text and simulator.stats()["requests"] == 0
    (project.path / "models" / "downstream.sql").unlink()
    out = project.run("compile", "--select", "complaints", "--vars", "{pg_llm_estimate: true}")
    lines = re.findall(r"llm_aggregate: estimate: (\d+) request\(s\) at most", out.text)
    assert len(lines) == 2 and simulator.stats()["requests"] == 0, out.text[-3000:]
    # the leaves are priced by the usual estimate (their keys are known), the levels above bounded
    assert "pg_llm estimate: model.aggregate_project.complaints.answer: sim:" in out.text
    assert re.search(r"unknown steps at most \$\d", out.text)
    project.run("run", "--select", "complaints")
    paid = simulator.stats()["requests"]
    rows = project.query(f'select product, answer, facts from "{project.schema}".complaints order by product')
    assert [r[0] for r in rows] == ["p0", "p1", "p2"]
    for product, answer, facts in rows:
        assert re.fullmatch(r"Digest [0-9a-f]{8} of 40 items: review \d+ of " + product + ".*", answer), answer
        facts = facts if isinstance(facts, dict) else json.loads(facts)
        assert isinstance(facts["complaints"], list)
    assert 6 < paid <= sum(int(n) for n in lines)  # a tree (more than one request per group), within the estimate
    calls = project.scalar(f'select count(*) from "{project.audit}".llm_calls where not cached')
    runs = project.scalar(f'select sum(requests) from "{project.audit}".llm_runs')
    assert calls == runs == paid
    simulator.reset()
    project.run("run", "--select", "complaints")
    assert simulator.stats()["requests"] == 0
    assert project.query(f'select product, answer, facts from "{project.schema}".complaints order by product') == rows
