"""Issue 19.1: pg_llm.embed as an llm_enrich column through real dbt runs, on a database with pgvector
(the column is vector(d)) and on one without it (real[]): each distinct text paid once (ledger),
a warm rerun embeds nothing, a NULL text gives NULL, a bad (empty) text fails only its row.

Each backend gets a database of its own (created here, dropped afterwards), so creating the
extension never changes what other tests see in the shared database.
"""
from __future__ import annotations

import dataclasses
import uuid

import pytest

from tests.functional.dbt_harness import INTEGRATION, DbtProject

pytestmark = pytest.mark.functional

TEXTS = ["red apple pie", "apple pie with cream", "kernel scheduler bug", "red apple pie", None, ""]
DISTINCT_OK = {"red apple pie", "apple pie with cream", "kernel scheduler bug"}
EMBEDDER = """
          embedder:   # an embedding model entry (OpenAI /v1/embeddings shape)
            provider: openai
            api_url: "{{ env_var('LLM_API_URL', 'http://127.0.0.1:8089/v1') }}"
            api_key: "{{ env_var('DBT_ENV_SECRET_LLM_API_KEY', 'sim-key') }}"
            model_version: text-embedding-3-small
            cost_per_1k_input_tokens: 0.00002
            retry: {max_retries: 2, base_delay_ms: 20}
"""


def _source() -> str:
    rows = ", ".join(f"({i}, {'null' if t is None else repr(t)})" for i, t in enumerate(TEXTS, start=1))
    return f"select * from (values {rows}) as t(id, body)"


MODEL = ("{{ pg_llm.llm_enrich(\"" + _source() + "\", "
         "{'emb': pg_llm.embed('body', model='embedder', dimensions=32), 'emb_native': pg_llm.embed('body', model='embedder')}) }}")


@pytest.fixture(scope="module", params=["pgvector", "real_array"])
def eproject(request, pg, simulator, tmp_path_factory):
    import psycopg2

    backend = request.param
    db = f"pgllm_emb_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**pg.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{db}"')
    info = dataclasses.replace(pg, dbname=db)
    if backend == "pgvector":
        conn = psycopg2.connect(**info.connect_kwargs())
        conn.autocommit = True
        conn.cursor().execute("create extension vector")
        conn.close()
    path = tmp_path_factory.mktemp("emb_project")
    (path / "models").mkdir()
    profile = (INTEGRATION / "profiles.yml").read_text()
    assert profile.count("        models:\n") == 1
    (path / "profiles.yml").write_text(profile.replace("        models:\n", "        models:" + EMBEDDER, 1))
    (path / "dbt_project.yml").write_text(
        "name: emb_project\nversion: '1.0.0'\nconfig-version: 2\nprofile: pg_llm_integration\n"
        "models:\n  emb_project:\n    +materialized: table\n")
    (path / "models" / "docs_embedded.sql").write_text(MODEL)
    proj = DbtProject(path, info, simulator.base_url, schema=f"emb_{uuid.uuid4().hex[:8]}")
    proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_emb_{uuid.uuid4().hex[:8]}", "LLM_JOURNAL_DIR": str(path / "journal")}
    proj.backend = backend
    simulator.reset()
    proj.run_out = proj.run("run")
    proj.first_stats = simulator.stats()
    yield proj
    from dbt.adapters.pg_llm.engines import close_engines

    close_engines()
    admin.cursor().execute(f'drop database "{db}" with (force)')
    admin.close()


def test_the_column_is_vector_d_with_pgvector_else_real_array(eproject):
    types = dict(eproject.query(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a join pg_class c on c.oid = a.attrelid "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relname = 'docs_embedded' "
        "and a.attname in ('emb', 'emb_native')", (eproject.schema,)))
    if eproject.backend == "pgvector":
        assert types == {"emb": "vector(32)", "emb_native": "vector(1536)"}
    else:
        assert types == {"emb": "real[]", "emb_native": "real[]"}


def test_each_distinct_text_is_paid_once_and_a_bad_row_fails_alone(eproject):
    stats = eproject.first_stats
    assert stats["embedding_inputs"] == 2 * len(DISTINCT_OK)  # two columns (32 and 1536 dims): two keys a text
    assert all(n == 2 for n in stats["by_prompt_sha256"].values())
    cast = "::real[]" if eproject.backend == "pgvector" else ""
    rows = eproject.query(f'select id, body, emb{cast}, emb_native{cast} from "{eproject.schema}".docs_embedded order by id')
    for _, body, emb, native in rows:
        if body:
            assert len(emb) == 32 and len(native) == 1536
        else:  # NULL text -> NULL; the empty text failed alone (a warning), the others are there
            assert emb is None and native is None
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    by_id = {i: e for i, _, e, _ in rows}
    assert by_id[1] == by_id[4] and dot(by_id[1], by_id[2]) > dot(by_id[1], by_id[3])
    assert any("got no embedding" in w for w in eproject.run_out.warnings)
    calls = eproject.query(f'select count(*), sum(prompt_tokens) from "{eproject.llm_env["LLM_AUDIT_SCHEMA"]}".llm_calls '
                           "where operation = 'embed'")[0]
    assert calls[0] == 2 and calls[1] == stats["prompt_tokens"]  # one row per request, the ledger's tokens


def test_a_warm_rerun_embeds_nothing(eproject, simulator):
    before = simulator.stats()["embedding_inputs"]
    eproject.run("run")
    assert simulator.stats()["embedding_inputs"] == before
