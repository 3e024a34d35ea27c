"""Issue 19.3: pg_llm.similarity, similarity_join and vector_index through real dbt runs, once on a
database with pgvector (`create extension vector`) and once on one without (real[] columns).

Each backend gets a database of its own (created here, dropped afterwards), so creating the
extension never changes what other tests see in the shared database.
"""
from __future__ import annotations

import dataclasses
import math
import random
import uuid

import pytest

from tests.functional.dbt_harness import INTEGRATION, DbtProject

DIM = 16


def _vectors(n: int, seed: int) -> list[list[float]]:
    rnd = random.Random(seed)
    return [[round(rnd.gauss(0, 1), 4) for _ in range(DIM)] for _ in range(n)]


def _cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _exact_top(left, right, k):
    """{left id: [right ids]} by cosine, ties by right id (what similarity_join promises)."""
    out = {}
    for lid, lv in left.items():
        ranked = sorted(right, key=lambda rid: (round(1 - _cos(lv, right[rid]), 9), rid))
        out[lid] = ranked[:k]
    return out


LEFT = {i: v for i, v in enumerate(_vectors(20, 1), start=1)}
RIGHT = {i: v for i, v in enumerate(_vectors(60, 2), start=1)}
RIGHT[61] = list(RIGHT[7])   # an exact tie with row 7: rank by id
LEFT[1] = list(RIGHT[7])     # ... at the top of left row 1's list
BIG_L = {i: v for i, v in enumerate(_vectors(50, 3), start=1)}
BIG_R = {i: v for i, v in enumerate(_vectors(3000, 4), start=1)}


def _values(rows: dict[int, list[float]], emb_type: str) -> str:
    return "select * from (values " + ", ".join(
        f"({i}, 'doc {i}', '{{{','.join(map(str, v))}}}'::real[]::{emb_type})" for i, v in rows.items()
    ) + ") as t(id, label, embedding)"


def _models(emb_type: str) -> dict[str, str]:
    hook = "{{ config(materialized='table', post_hook=\"{{ pg_llm.vector_index('embedding') }}\") }}\n"
    return {
        "vec_left.sql": "{{ config(materialized='table') }}\n" + _values(LEFT, emb_type),
        "vec_right.sql": hook + _values(RIGHT, emb_type),
        "vec_big_left.sql": "{{ config(materialized='table') }}\n" + _values(BIG_L, emb_type),
        "vec_big_right.sql": hook + _values(BIG_R, emb_type),
        "vec_join.sql": "{{ pg_llm.similarity_join(ref('vec_left'), ref('vec_right'), 'embedding', 'embedding', k=3) }}",
        "vec_join_min.sql": "{{ pg_llm.similarity_join('select id, embedding from ' ~ ref('vec_left'), ref('vec_right'), 'embedding', 'embedding', k=5, min_similarity=0.3) }}",
        "vec_big_join.sql": "{{ pg_llm.similarity_join(ref('vec_big_left'), ref('vec_big_right'), 'embedding', 'embedding', k=10) }}",
        # real[] operands on both backends (with pgvector: cast to vector), a NULL, a zero vector
        "vec_sim_arrays.sql": "select {{ pg_llm.similarity(\"'{1,0,0}'::real[]\", \"'{1,1,0}'::real[]\") }} as s45, "
                              "{{ pg_llm.similarity(\"'{1,2,3}'::real[]\", 'null::real[]') }} as s_null",
        "vec_sim.sql": "select l.id as left_id, r.id as right_id, {{ pg_llm.similarity('l.embedding', 'r.embedding') }} as sim\n"
                       "from {{ ref('vec_left') }} l cross join {{ ref('vec_right') }} r",
    }


@pytest.fixture(scope="module", params=["pgvector", "real_array"])
def vproject(request, pg, simulator, tmp_path_factory):
    import psycopg2

    backend = request.param
    db = f"pgllm_vec_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**pg.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{db}"')
    try:   # the database is dropped even when the setup fails
        info = dataclasses.replace(pg, dbname=db)
        emb_type = "real[]"
        if backend == "pgvector":
            conn = psycopg2.connect(**info.connect_kwargs())
            conn.autocommit = True
            conn.cursor().execute("create extension vector")
            conn.close()
            emb_type = f"vector({DIM})"
        path = tmp_path_factory.mktemp("vec_project")
        (path / "models").mkdir()
        (path / "profiles.yml").write_text((INTEGRATION / "profiles.yml").read_text())
        (path / "dbt_project.yml").write_text(
            "name: vec_project\nversion: '1.0.0'\nconfig-version: 2\nprofile: pg_llm_integration\n"
            "models:\n  vec_project:\n    +materialized: table\n")
        for name, text in _models(emb_type).items():
            (path / "models" / name).write_text(text)
        proj = DbtProject(path, info, simulator.base_url, schema=f"vec_{uuid.uuid4().hex[:8]}")
        proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_vec_{uuid.uuid4().hex[:8]}",
                        "LLM_JOURNAL_DIR": str(path / "journal")}
        proj.db = db
        proj.backend = backend
        proj.run_out = proj.run("run")
        yield proj
    finally:
        from dbt.adapters.pg_llm.engines import close_engines

        close_engines()
        admin.cursor().execute(f'drop database "{db}" with (force)')
        admin.close()


def test_similarity_join_is_the_exact_top_k_with_ties_by_the_right_row(vproject):
    rows = vproject.query(f'select id, right_id, similarity, similarity_rank from "{vproject.schema}".vec_join order by id, similarity_rank')
    got = {}
    for lid, rid, sim, rank in rows:
        got.setdefault(lid, []).append(rid)
        assert sim == pytest.approx(_cos(LEFT[lid], RIGHT[rid]), abs=1e-5)
        assert rank == len(got[lid])
    assert got == _exact_top(LEFT, RIGHT, 3)
    cols = [r[0] for r in vproject.query(
        "select column_name from information_schema.columns where table_schema = %s and table_name = 'vec_join' order by ordinal_position",
        (vproject.schema,))]
    assert cols == ["id", "label", "right_id", "right_label", "similarity", "similarity_rank"]


def test_min_similarity_keeps_only_the_close_ones(vproject):
    rows = vproject.query(f'select id, right_id, similarity from "{vproject.schema}".vec_join_min')
    exact = _exact_top(LEFT, RIGHT, 5)
    want = {(lid, rid) for lid, rids in exact.items() for rid in rids if _cos(LEFT[lid], RIGHT[rid]) >= 0.3}
    assert want and {(lid, rid) for lid, rid, _ in rows} == want
    assert all(sim >= 0.3 for *_, sim in rows)


def test_similarity_is_cosine_on_both_backends(vproject):
    rows = vproject.query(f'select left_id, right_id, sim from "{vproject.schema}".vec_sim')
    assert len(rows) == len(LEFT) * len(RIGHT)
    for lid, rid, sim in rows:
        assert sim == pytest.approx(_cos(LEFT[lid], RIGHT[rid]), abs=1e-5)


def _hnsw_indexes(proj, table: str) -> list[str]:
    return [r[0] for r in proj.query(
        "select indexdef from pg_indexes where schemaname = %s and tablename = %s and indexdef like '%%USING hnsw%%'",
        (proj.schema, table))]


def test_vector_index_post_hook_and_the_join_uses_it(vproject):
    compiled = next((vproject.path / "target" / "compiled").rglob("vec_big_join.sql")).read_text()
    plan = "\n".join(r[0] for r in vproject.query("explain " + compiled))
    if vproject.backend == "pgvector":
        assert len(_hnsw_indexes(vproject, "vec_big_right")) == 1, _hnsw_indexes(vproject, "vec_big_right")
        assert "vector_cosine_ops" in _hnsw_indexes(vproject, "vec_big_right")[0]
        assert "Index Scan using" in plan and "vec_big_right" in plan, plan
        # a rebuilt table gets its index again (the replaced table's index still exists during the hook)
        vproject.run("run", "-s", "vec_big_right+")
        assert len(_hnsw_indexes(vproject, "vec_big_right")) == 1
    else:
        assert _hnsw_indexes(vproject, "vec_big_right") == []
        assert "Index Scan" not in plan, plan
        assert "vector extension is not installed" in vproject.run_out.text


def test_recall_at_10_of_the_join_against_the_exact_top_10(vproject):
    rows = vproject.query(f'select id, right_id from "{vproject.schema}".vec_big_join')
    exact = _exact_top(BIG_L, BIG_R, 10)
    found = sum(1 for lid, rid in rows if rid in exact[lid])
    recall = found / (10 * len(BIG_L))
    print(f"{vproject.backend}: recall@10 = {recall:.3f}")
    if vproject.backend == "pgvector":
        assert recall >= 0.9   # HNSW: approximate (m=16, ef_search=40 defaults)
    else:
        assert recall == 1.0   # exact scan


def test_bad_input_errors_name_the_argument_and_the_fix(vproject):
    mismatch = vproject.run("show", "--inline", "select {{ pg_llm.similarity(\"'{1,2}'::real[]\", \"'{1,2,3}'::real[]\") }} as s",
                            expect=False)
    if vproject.backend == "pgvector":
        assert "different vector dimensions 2 and 3" in mismatch.text
        many = vproject.run("compile", "--inline",
                            "{{ pg_llm.similarity_join(ref('vec_left'), ref('vec_right'), 'embedding', 'embedding', k=50) }}")
        assert any("k=50 is above pgvector's default hnsw.ef_search (40)" in w and "set hnsw.ef_search = 50" in w
                   for w in many.warnings), many.warnings
        return
    assert "different dimensions (2 vs 3); embed both sides with the same model and dimensions" in mismatch.text
    wrong = vproject.run("compile", "--inline",
                         "{{ pg_llm.similarity_join(ref('vec_left'), ref('vec_right'), 'emb', 'embedding') }}", expect=False)
    assert "the left embedding column 'emb' is not a column of the left relation (its columns: id, label, embedding)" in wrong.text
    overlap = vproject.run("compile", "--inline",
                           "{{ pg_llm.embed_chunks(ref('vec_left'), 'id', 'label', chunk_size=40, overlap=40) }}", expect=False)
    assert "overlap must be an integer from 0 to chunk_size - 1 (39), got 40" in overlap.text


def test_compile_before_the_inputs_exist(vproject):
    out = vproject.run("compile", "-s", "vec_join", "vec_big_join", DBT_SCHEMA=f"vec_none_{uuid.uuid4().hex[:6]}")
    compiled = next((vproject.path / "target" / "compiled").rglob("vec_join.sql")).read_text()
    assert "cross join lateral" in compiled and "limit 3" in compiled, out.text[-2000:]


def test_similarity_of_real_arrays_on_both_backends(vproject):
    s45, s_null = vproject.query(f'select s45, s_null from "{vproject.schema}".vec_sim_arrays')[0]
    assert s45 == pytest.approx(math.sqrt(0.5), abs=1e-6) and s_null is None
