"""operators/embed.store_vectors: a binary COPY straight into llm_embeddings, and when a key is
already there (another writer got in first) the whole write falls back to the staging table:
nothing fails, the stored vector is kept, the new keys are written."""
from __future__ import annotations

import pytest

from dbt_pg_llm.operators.embed import fetch_vectors, store_vectors, vector_to_b64
from dbt_pg_llm.pg.migrations import migrate

pytestmark = pytest.mark.functional


def test_a_key_already_stored_neither_fails_the_copy_nor_is_overwritten(db):
    connect, _, audit = db
    conn = connect()
    conn.autocommit = True
    try:
        migrate(conn, audit)
        store_vectors(conn, f'"{audit}"', [("k1", vector_to_b64([1.0, 0.0])), ("k2", vector_to_b64([0.0, 1.0]))], "m")
        store_vectors(conn, f'"{audit}"', [("k2", vector_to_b64([9.0, 9.0])), ("k3", vector_to_b64([0.5, 0.5]))], "m",
                      tokens_each=3)
        got = fetch_vectors(conn, audit, ["k1", "k2", "k3"])
        assert got == {"k1": [1.0, 0.0], "k2": [0.0, 1.0], "k3": [0.5, 0.5]}
        with conn.cursor() as cur:
            cur.execute(f'select key, prompt_tokens, model from "{audit}".llm_embeddings order by key')
            assert cur.fetchall() == [("k1", 0, "m"), ("k2", 0, "m"), ("k3", 3, "m")]
    finally:
        conn.close()
