"""operators/embed.store_vectors: a binary COPY straight into llm_embeddings, and when a key is
already there (another writer got in first) the whole write falls back to the staging table:
nothing fails, the stored vector is kept, the new keys are written. On a database with pgvector
(``vec vector``, migration 20) and on one without (``vec real[]``) alike."""
from __future__ import annotations

import dataclasses
import uuid

import pytest

from dbt_pg_llm.operators.embed import fetch_vectors, store_vectors, vector_to_b64
from dbt_pg_llm.pg.vectors import vector_storage
from dbt_pg_llm.pg.migrations import forget_migrated, migrate

pytestmark = pytest.mark.functional


@pytest.fixture(params=["pgvector", "real_array"])
def backend_conn(request, pg):
    """(autocommit connection to a database of its own, with pgvector or without, backend name)."""
    import psycopg2

    name = f"pgllm_store_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**pg.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{name}"')
    conn = None
    try:
        conn = psycopg2.connect(**dataclasses.replace(pg, dbname=name).connect_kwargs())
        conn.autocommit = True
        if request.param == "pgvector":
            conn.cursor().execute("create extension vector")
        yield conn, request.param
    finally:
        if conn is not None:
            conn.close()
        admin.cursor().execute(f'drop database "{name}" with (force)')
        admin.close()


def _column_type(conn, audit: str) -> str:
    with conn.cursor() as cur:
        cur.execute("select format_type(atttypid, atttypmod) from pg_attribute where attrelid = %s::regclass "
                    "and attname = 'vec'", (f'"{audit}".llm_embeddings',))
        return cur.fetchone()[0]


def test_a_key_already_stored_neither_fails_the_copy_nor_is_overwritten(backend_conn):
    conn, backend = backend_conn
    audit = "llm_store"
    migrate(conn, audit)
    assert _column_type(conn, audit) == ("vector" if backend == "pgvector" else "real[]")
    assert vector_storage(conn, f'"{audit}"') is (backend == "pgvector")
    store_vectors(conn, f'"{audit}"', [("k1", vector_to_b64([1.0, 0.0])), ("k2", vector_to_b64([0.0, 1.0]))], "m")
    rejected = store_vectors(conn, f'"{audit}"', [("k2", vector_to_b64([9.0, 9.0])), ("k3", vector_to_b64([0.5, 0.5])),
                                                  ("k4", vector_to_b64([float("nan"), 0.5]))], "m", tokens_each=3)
    assert rejected == ["k4"]
    got = fetch_vectors(conn, audit, ["k1", "k2", "k3", "k4"])
    assert got == {"k1": [1.0, 0.0], "k2": [0.0, 1.0], "k3": [0.5, 0.5]}
    with conn.cursor() as cur:
        cur.execute(f'select key, prompt_tokens, model from "{audit}".llm_embeddings order by key')
        assert cur.fetchall() == [("k1", 0, "m"), ("k2", 0, "m"), ("k3", 3, "m")]
        if backend == "pgvector":  # pgvector's own operators work on the stored column as it is
            cur.execute(f"""select round((1 - (a.vec <=> b.vec))::numeric, 4) from "{audit}".llm_embeddings a,
                            "{audit}".llm_embeddings b where a.key = 'k1' and b.key = 'k3'""")
            assert float(cur.fetchone()[0]) == pytest.approx(0.7071, abs=1e-4)


def test_migration_20_turns_stored_real_arrays_into_vectors_where_pgvector_is(backend_conn):
    """A schema migrated before migration 20 keeps every vector it holds: converted where the
    extension is installed, left as real[] where it is not."""
    conn, backend = backend_conn
    audit = "llm_upgrade"
    migrate(conn, audit)
    with conn.cursor() as cur:  # back to what migration 19 left: vec real[], version 20 not applied
        cur.execute(f'alter table "{audit}".llm_embeddings alter column vec type real[] using vec::real[]')
        cur.execute(f'delete from "{audit}".schema_migrations where version = 20')
    store_vectors(conn, f'"{audit}"', [("k1", vector_to_b64([1.0, 0.0, 0.25])), ("k2", vector_to_b64([0.5, 0.5]))], "m")
    forget_migrated()
    assert migrate(conn, audit) == [20]
    assert _column_type(conn, audit) == ("vector" if backend == "pgvector" else "real[]")
    assert fetch_vectors(conn, audit, ["k1", "k2"]) == {"k1": [1.0, 0.0, 0.25], "k2": [0.5, 0.5]}


def test_the_join_and_the_key_lookup_give_the_same_rows_and_the_cheaper_one_is_chosen(backend_conn):
    """``embed_join_sql`` fetches each row's vector by a left join or by a primary-key lookup (Postgres
    hashes the whole cache for the join, so lookups win once the cache outgrows the model): the same
    rows either way (NULL texts and texts without a vector give NULL), and ``lookup_is_cheaper`` picks
    lookups only when the cache holds more than twice the model's rows."""
    from dbt_pg_llm.operators.embed import embedding_key
    from dbt_pg_llm.operators.embed_columns import embed_join_sql, lookup_is_cheaper, vector_type

    conn, backend = backend_conn
    audit, fp = "llm_join", "f" * 64
    migrate(conn, audit)
    with conn.cursor() as cur:
        cur.execute("create table docs (id int primary key, body text)")
        cur.execute("insert into docs select g, case when g % 10 = 0 then null else 'text ' || g end "
                    "from generate_series(1, 40) g")
    stored = {i: [float(i), 1.0] for i in range(1, 40) if i % 10 and i % 7}  # 7, 14, ... have no vector
    store_vectors(conn, f'"{audit}"', [(embedding_key(fp, f"text {i}"), vector_to_b64(v)) for i, v in stored.items()], "m")
    columns = [("emb", fp, "body", 2)]
    vector = vector_type(conn)
    assert (vector is not None) is (backend == "pgvector")
    results = []
    for lookup in (False, True):
        sql = embed_join_sql("select id, body from docs", columns, audit, vector, lookup=lookup)
        with conn.cursor() as cur:
            cur.execute(f"select id, emb{'::real[]' if vector else ''} from ({sql}) s order by id")
            results.append(cur.fetchall())
    assert results[0] == results[1]
    assert results[0] == [(i, stored.get(i)) for i in range(1, 41)]
    with conn.cursor() as cur:
        cur.execute(f'analyze "{audit}".llm_embeddings; analyze docs')
    assert not lookup_is_cheaper(conn, "select id, body from docs", columns, audit)  # 29 vectors, 40 rows
    assert lookup_is_cheaper(conn, "select id, body from docs where id <= 5", columns, audit)  # 29 vs ~5
    store_vectors(conn, f'"{audit}"', [(f"other{i}", vector_to_b64([0.5, 0.5])) for i in range(200)], "m")
    assert lookup_is_cheaper(conn, "select id, body from docs", columns, audit)  # the cache grew past 2x
    assert not lookup_is_cheaper(conn, "select id, body from no_such_table", columns, audit)  # cannot tell


def test_the_missing_texts_come_with_the_keys_python_computes(db, pg_conn):
    """embed_relation takes each text's key from Postgres (no hashing of 100,000 texts in Python): it
    must be exactly ``embedding_key`` (unicode, newlines, duplicates, NULL), and stored texts are left out."""
    from dbt_pg_llm.operators.embed import embedding_key
    from dbt_pg_llm.operators.embed_columns import missing_texts_sql

    connect, schema, audit = db
    fp = "e" * 64
    texts = ["plain", "ünïcødé — ✓", "two\nlines", "plain", None, "stored already", " padded "]
    with pg_conn.cursor() as cur:
        cur.execute("create table docs (id serial, body text)")
        cur.executemany("insert into docs (body) values (%s)", [(t,) for t in texts])
    conn = connect()
    conn.autocommit = True
    try:
        migrate(conn, audit)
        store_vectors(conn, f'"{audit}"', [(embedding_key(fp, "stored already"), vector_to_b64([1.0]))], "m")
        with conn.cursor() as cur:
            cur.execute(missing_texts_sql(f'"{schema}".docs', "body", fp, audit))
            got = sorted(cur.fetchall())
    finally:
        conn.close()
    expected = sorted({(t, embedding_key(fp, t)) for t in texts if t is not None and t != "stored already"})
    assert got == expected
