"""pg_llm.top_k through dbt (issue 20.3): the macro's model on the example profile with the embedding
first pass (rows and query embedded through pg_llm.embed on the simulator), the simulator's rule's
top-k per partition with rank 1..k, llm_calls = llm_runs = paid, a warm rerun paying nothing, the
estimate logged by `dbt compile`, and bad arguments failing compilation with the argument named."""
from __future__ import annotations

import re

import pytest
from dbt_harness import one_model_project

from dbt_pg_llm.simulator.rank_answers import overlap

pytestmark = pytest.mark.functional

QUERY = "the strap broke"
BODIES = {"a": ["the strap broke", "lid cracked", "strap ok", "box late", "strap broke today", "fine",
                "the box", "broke"], "b": ["blue", "the strap", "red", "strap broke"]}
SOURCE = "select * from (values " + ", ".join(
    f"({i}, '{g}', '{t}')" for i, (g, t) in enumerate(((g, t) for g, ts in BODIES.items() for t in ts), 1)
) + ") as v(id, product, body)"
MODEL = """
select * from {{ pg_llm.top_k(pg_llm.llm_enrich("%s", {'emb': pg_llm.embed('body', dimensions=16)}),
                              'product', 'body', '%s', %s, id_column='id', window=4%s) }}
"""


def expected(k):
    rows = [(i, g, t) for i, (g, t) in enumerate(((g, t) for g, ts in BODIES.items() for t in ts), 1)]
    return {g: sorted(((-overlap(QUERY, t), i) for i, gg, t in rows if gg == g))[:k] for g in BODIES}


@pytest.fixture
def topk_project(pg, simulator, tmp_path):
    simulator.reset()
    yield from one_model_project(tmp_path, pg, simulator.base_url, "top_k_project", "best_notes",
                                 MODEL % (SOURCE, QUERY, 2, ""), "topk")


def test_dbt_top_k_ranks_estimates_reruns_and_rejects_bad_arguments(topk_project, simulator):
    project = topk_project
    out = project.run("compile", "--select", "best_notes", "--vars", "{pg_llm_estimate: true}")
    est = re.findall(r"estimate: (\d+) request\(s\) for 2 partition\(s\)", out.text)
    assert len(est) == 1, out.text[-3000:]
    project.run("run", "--select", "best_notes")
    chat = simulator.stats()["requests"]
    rows = project.query(f'select product, id, rank from "{project.schema}".best_notes order by product, rank')
    want = expected(2)
    assert [(g, i, r) for g, i, r in rows] == [(g, i, r) for g in sorted(want) for r, (_, i) in enumerate(want[g], 1)]
    calls = project.scalar(f'select count(*) from "{project.audit}".llm_calls where not cached')
    runs = project.scalar(f'select sum(requests) from "{project.audit}".llm_runs')
    assert calls == runs == chat  # the windows (and the embeddings) are in the audit
    simulator.reset()
    project.run("run", "--select", "best_notes")
    assert simulator.stats()["requests"] == 0
    # with the embedding first pass (2 candidates per partition): 1 window each, less than without
    (project.path / "models" / "best_notes.sql").write_text(MODEL % (SOURCE, QUERY, 1, ", embedding_column='emb', candidates=2, dimensions=16"))
    project.run("run", "--select", "best_notes")
    # one final window per partition (the query's text is a row's text: its 16-d vector is cached)
    assert simulator.stats()["requests"] == 2
    top = project.query(f'select product, id, rank from "{project.schema}".best_notes order by product')
    assert [r[2] for r in top] == [1, 1] and [r[0] for r in top] == ["a", "b"]
    for bad, named in (("0", "k: 0 must be a whole number >= 1"), ("none", "k: None must be")):
        (project.path / "models" / "best_notes.sql").write_text(MODEL % (SOURCE, QUERY, bad, ""))
        out = project.run("compile", "--select", "best_notes", expect=False)
        assert named in out.text, out.text[-2000:]
