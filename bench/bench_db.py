"""A scratch database for benchmarks: the embedded Postgres, schemas dropped at the end."""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

from dbt_pg_llm.embedded_pg import EmbeddedPostgres

__all__ = ["BenchDb", "bench_db"]


class BenchDb:
    """``connect()`` opens a new connection; ``admin`` is an autocommit one; ``schema(prefix)``
    names a new schema (created unless ``create=False``) that is dropped at the end."""

    def __init__(self, info):
        import psycopg2

        self._kwargs = info.connect_kwargs()
        self._psycopg2 = psycopg2
        self.admin = self.connect()
        self.admin.autocommit = True
        self.schemas: list[str] = []

    def connect(self):
        return self._psycopg2.connect(**self._kwargs)

    def schema(self, prefix: str = "bench", create: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.schemas.append(name)
        if create:
            with self.admin.cursor() as cur:
                cur.execute(f"create schema {name}")
        return name


@contextlib.contextmanager
def bench_db() -> Iterator[BenchDb]:
    server = EmbeddedPostgres()
    db = BenchDb(server.start())
    try:
        yield db
    finally:
        with db.admin.cursor() as cur:
            for name in db.schemas:
                cur.execute(f"drop schema if exists {name} cascade")
        db.admin.close()
        server.release()
