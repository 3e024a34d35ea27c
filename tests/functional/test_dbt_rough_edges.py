"""Rough edges a new user hit (issue 18, part 3), through dbt (dbtRunner in-process): each says
what to do instead of failing with someone else's message."""
from __future__ import annotations

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

pytestmark = pytest.mark.functional

CTE_MODEL = """
with cleaned as (select 1 as id, 'fine kettle' as body)
{{ pg_llm.llm_enrich('cleaned', {'sentiment': pg_llm.classify('body', labels=['positive', 'negative'])}) }}
"""

QUERY_MODEL = """
{{ pg_llm.llm_enrich('-- a comment first\\n  SELECT 1 as id, ' ~ "'fine kettle'" ~ ' as body',
                     {'sentiment': pg_llm.classify('body', labels=['positive', 'negative'])}) }}
"""


@pytest.fixture
def rough_project(pg, simulator, tmp_path):
    simulator.reset()
    yield from one_model_project(tmp_path, pg, simulator.base_url, "rough_project", "rough", CTE_MODEL, "rough")


def test_llm_enrich_of_a_cte_or_table_name_says_to_pass_a_relation_or_a_query(rough_project, simulator):
    project = rough_project
    out = project.run("run", expect=False)
    # was: a raw Postgres "syntax error at or near ")"" from the fill's own query
    assert "the first argument cleaned is neither a relation nor a query" in out.text
    assert "ref('model')" in out.text and "A CTE of this model cannot be used" in out.text
    assert "syntax error" not in out.text.lower() and simulator.stats()["requests"] == 0
    # a query string (even after a comment, in capitals) is still accepted
    (project.path / "models" / "rough.sql").write_text(QUERY_MODEL)
    project.run("run")
    assert project.scalar(f'select sentiment from "{project.schema}".rough') in ("positive", "negative")
