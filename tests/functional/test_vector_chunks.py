"""Issue 19.2 / 19.3: pg_llm.embed_chunks and pg_llm.semantic_search through real dbt runs against the
simulator's /v1/embeddings, on a database with pgvector and on one without (real[]).

Each backend gets a database of its own (created here, dropped afterwards)."""
from __future__ import annotations

import dataclasses
import math
import re
import uuid

import pytest

from dbt_pg_llm.simulator.embeddings import embedding_of
from tests.functional.dbt_harness import INTEGRATION, DbtProject

DIM = 64
SIZE, OVERLAP = 40, 10
DOCS = {
    1: "A quiet electric kettle that boils water fast and switches itself off when done.",
    2: "Sturdy hiking boots, waterproof leather, good grip on wet rocks and muddy trails all day long.",
    3: "Short note.",
    4: "The blender is loud but crushes ice well; the lid leaks a little when it is full of soup.",
    8: "\n\t Leading whitespace, then a few words of a short review.\n",
}
QUERY = "quiet electric kettle"
# an embedding model entry in the example profile (the simulator embeds for any model_version)
EMBEDDER = """        models:
          embedder:
            provider: openai
            api_url: "{{ env_var('LLM_API_URL') }}"
            api_key: "{{ env_var('DBT_ENV_SECRET_LLM_API_KEY') }}"
            model_version: text-embedding-3-small
            cost_per_1k_input_tokens: 0.00002
"""


def _chunks(text: str, size: int = SIZE, overlap: int = OVERLAP) -> list[str]:
    """What embed_chunks promises: chunks of `size` characters, each `size - overlap` after the last."""
    step = size - overlap
    n = max(1, math.ceil((len(text) - overlap) / step))
    return [text[i * step: i * step + size] for i in range(n)]


def _word_chunks(text: str, size: int, overlap: int) -> list[str]:
    words = text.split()
    step = size - overlap
    n = max(1, math.ceil((len(words) - overlap) / step))
    return [" ".join(words[i * step: i * step + size]) for i in range(n)]


def _cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _models(src: str) -> dict[str, str]:
    return {
        "doc_chunks.sql": "{{ config(post_hook=\"{{ pg_llm.vector_index('embedding') }}\") }}\n"
                          f"{{{{ pg_llm.embed_chunks('select * from {src}', 'doc_id', 'body', chunk_size={SIZE}, overlap={OVERLAP}, dimensions={DIM}, model='embedder') }}}}\n",
        "doc_word_chunks.sql": f"{{{{ pg_llm.embed_chunks('select * from {src}', 'doc_id', 'body', chunk_size=6, overlap=2, unit='words', dimensions={DIM}, model='embedder') }}}}\n",
        "kettle_search.sql": f"{{{{ pg_llm.semantic_search(ref('doc_chunks'), 'embedding', '{QUERY}', k=3, dimensions={DIM}, model='embedder') }}}}\n",
    }


@pytest.fixture(scope="module", params=["pgvector", "real_array"])
def cproject(request, pg, simulator, tmp_path_factory):
    import psycopg2

    db = f"pgllm_chunks_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**pg.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{db}"')
    try:   # the database is dropped even when the setup fails
        info = dataclasses.replace(pg, dbname=db)
        conn = psycopg2.connect(**info.connect_kwargs())
        conn.autocommit = True
        if request.param == "pgvector":
            conn.cursor().execute("create extension vector")
        conn.cursor().execute("create schema src; create table src.docs (doc_id int primary key, body text)")
        conn.cursor().executemany("insert into src.docs values (%s, %s)", list(DOCS.items()) + [(5, None), (6, "  "), (9, "\n\t \n")])
        conn.close()
        path = tmp_path_factory.mktemp("chunk_project")
        (path / "models").mkdir()
        (path / "profiles.yml").write_text((INTEGRATION / "profiles.yml").read_text().replace("        models:\n", EMBEDDER, 1))
        (path / "dbt_project.yml").write_text(
            "name: chunk_project\nversion: '1.0.0'\nconfig-version: 2\nprofile: pg_llm_integration\n"
            "models:\n  chunk_project:\n    +materialized: table\n")
        for name, text in _models("src.docs").items():
            (path / "models" / name).write_text(text)
        proj = DbtProject(path, info, simulator.base_url, schema=f"chunks_{uuid.uuid4().hex[:8]}")
        proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_chunks_{uuid.uuid4().hex[:8]}", "LLM_JOURNAL_DIR": str(path / "journal")}
        proj.backend = request.param
        simulator.reset()
        proj.run_out = proj.run("run")
        proj.first_stats = simulator.stats()
        yield proj
    finally:
        from dbt.adapters.pg_llm.engines import close_engines

        close_engines()
        admin.cursor().execute(f'drop database "{db}" with (force)')
        admin.close()


def test_chunks_by_characters_and_words_with_their_embeddings(cproject):
    rows = cproject.query(f'select doc_id, chunk_index, chunk_text, embedding::real[] from "{cproject.schema}".doc_chunks order by 1, 2')
    want = [(d, i, c) for d, text in DOCS.items() for i, c in enumerate(_chunks(text))]
    assert [(d, i, c) for d, i, c, _ in rows] == want    # no row for the NULL and the blank documents
    for _, _, text, vec in rows:
        assert len(vec) == DIM
        assert _cos(vec, embedding_of(text, DIM)) == pytest.approx(1.0, abs=1e-5)
    words = cproject.query(f'select doc_id, chunk_index, chunk_text from "{cproject.schema}".doc_word_chunks order by 1, 2')
    assert words == [(d, i, c) for d, text in DOCS.items() for i, c in enumerate(_word_chunks(text, 6, 2))]
    column_type = cproject.scalar(
        "select format_type(atttypid, atttypmod) from pg_attribute where attrelid = %s::regclass and attname = 'embedding'",
        (f'"{cproject.schema}".doc_chunks',))
    assert column_type == (f"vector({DIM})" if cproject.backend == "pgvector" else "real[]")
    distinct = {c for text in DOCS.values() for c in _chunks(text)} | \
               {c for text in DOCS.values() for c in _word_chunks(text, 6, 2)} | {QUERY}
    assert cproject.first_stats["embedding_inputs"] == len(distinct)   # each distinct text paid once


def test_semantic_search_top_k_with_scores(cproject):
    rows = cproject.query(f'select doc_id, chunk_index, chunk_text, similarity, similarity_rank from "{cproject.schema}".kettle_search order by similarity_rank')
    query = embedding_of(QUERY, DIM)
    every = sorted(((-_cos(query, embedding_of(c, DIM)), d, i) for d, text in DOCS.items() for i, c in enumerate(_chunks(text))))
    assert [(d, i) for d, i, *_ in rows] == [(d, i) for _, d, i in every[:3]]
    assert rows[0][0] == 1 and "kettle" in rows[0][2]
    for d, i, text, sim, rank in rows:
        assert sim == pytest.approx(_cos(query, embedding_of(text, DIM)), abs=1e-5)
    assert [r[4] for r in rows] == [1, 2, 3]
    if cproject.backend == "pgvector":
        compiled = next((cproject.path / "target" / "compiled").rglob("kettle_search.sql")).read_text()
        plan = "\n".join(r[0] for r in cproject.query("explain " + compiled))
        assert "Index Scan using" in plan and "doc_chunks" in plan, plan
        many = cproject.run("compile", "--inline",
                            f"{{{{ pg_llm.semantic_search(ref('doc_chunks'), 'embedding', 'kettle', k=41, dimensions={DIM}, model='embedder') }}}}")
        assert any("semantic_search: k=41 is above pgvector's default hnsw.ef_search (40)" in w for w in many.warnings), many.warnings


def test_rerun_requests_only_new_or_changed_documents(cproject, simulator):
    simulator.reset()
    cproject.run("run")
    assert simulator.stats()["embedding_inputs"] == 0    # warm: chunks and the query are cached
    changed = DOCS[2].replace("muddy", "sandy")
    added = "A brand new document about a quiet electric kettle with a long cord."
    cproject.query("update src.docs set body = %s where doc_id = 2", (changed,))
    cproject.query("insert into src.docs values (7, %s)", (added,))
    try:
        simulator.reset()
        cproject.run("run")
        old = {c for text in DOCS.values() for c in _chunks(text)} | \
              {c for text in DOCS.values() for c in _word_chunks(text, 6, 2)}
        new = ({c for t in (changed, added) for c in _chunks(t)} |
               {c for t in (changed, added) for c in _word_chunks(t, 6, 2)}) - old
        assert simulator.stats()["embedding_inputs"] == len(new) > 0
        assert cproject.scalar(f'select count(*) from "{cproject.schema}".doc_chunks where doc_id = 7') == len(_chunks(added))
        top = cproject.query(f'select doc_id from "{cproject.schema}".kettle_search order by similarity_rank')
        assert 7 in [r[0] for r in top]
    finally:
        cproject.query("update src.docs set body = %s where doc_id = 2", (DOCS[2],))
        cproject.query("delete from src.docs where doc_id = 7")
