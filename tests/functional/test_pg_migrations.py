"""Audit schema migrations against a real (embedded) Postgres: idempotent, concurrent, retention."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.pg.migrations import (
    MIGRATIONS, apply_retention, ensure_call_partitions, migrate, transaction, validate_schema_name,
)
from dbt_pg_llm.pg.writers import write_calls

pytestmark = pytest.mark.functional

TABLES = {"schema_migrations", "llm_results", "llm_claims", "llm_calls", "llm_runs", "llm_errors",
          "llm_alerts", "llm_frame_prompts"}
VIEWS = {"llm_metrics", "llm_model_status"}


@pytest.fixture
def conn(pg_conn):
    return pg_conn  # autocommit


@pytest.fixture
def schema(audit_schema_name):
    return audit_schema_name  # not created yet: the tests migrate it


def _relations(conn, schema):
    with conn.cursor() as cur:
        cur.execute("select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = %s and c.relkind in ('r', 'p', 'v')", (schema,))
        return dict(cur.fetchall())


def test_migrate_creates_everything_and_is_idempotent(conn, schema):
    applied = migrate(conn, schema)
    assert applied == [v for v, _ in MIGRATIONS]
    rels = _relations(conn, schema)
    assert TABLES <= set(rels)
    assert VIEWS <= {n for n, k in rels.items() if k == "v"}
    assert rels["llm_calls"] == "p"  # partitioned
    assert migrate(conn, schema) == []  # second run: nothing to do
    with conn.cursor() as cur:
        cur.execute(f"select version from {schema}.schema_migrations order by 1")
        assert [r[0] for r in cur.fetchall()] == [v for v, _ in MIGRATIONS]
        cur.execute(f"select * from {schema}.llm_metrics")  # the views are queryable when empty
        cur.execute(f"select * from {schema}.llm_model_status")


def test_migrate_works_on_a_non_autocommit_connection(pg, schema):
    c = psycopg2.connect(pg.dsn())
    try:
        assert migrate(c, schema)
        assert c.status == psycopg2.extensions.STATUS_READY  # committed, no transaction left open
    finally:
        c.close()


def test_concurrent_migrations_on_a_fresh_schema(pg, schema):
    errors, results = [], []
    barrier = threading.Barrier(4)

    def worker():
        c = psycopg2.connect(pg.dsn())
        try:
            barrier.wait()
            results.append(migrate(c, schema))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(MIGRATIONS)]  # exactly one did the work


@pytest.mark.parametrize("bad", ["pg_llm", "PG_x", "Llm", "1abc", "a-b", "a b", 'x"; drop', "", "a" * 64])
def test_bad_schema_names_are_refused_clearly(bad):
    with pytest.raises(ConfigError) as info:
        validate_schema_name(bad)
    assert "audit_schema" in str(info.value)
    if bad.lower().startswith("pg_"):
        assert "reserves" in str(info.value)


def test_monthly_partitions_on_demand_and_retention(conn, schema):
    migrate(conn, schema)
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=120)
    older = now - timedelta(days=400)
    # a row lands in the default partition first; creating its month's partition later moves it
    write_calls(conn, schema, [])
    with conn.cursor() as cur:
        cur.execute(f"insert into {schema}.llm_calls (ts, model) values (%s, 'm')", (older,))
    logs = [{"ts": t, "model": "m", "cost_usd": 0.5, "context": {"run_id": "r1"}} for t in (now, old, older)]
    assert write_calls(conn, schema, logs) == 3
    with conn.cursor() as cur:
        cur.execute(f"select tableoid::regclass::text, count(*) from {schema}.llm_calls group by 1")
        counts = dict(cur.fetchall())
    assert f"{schema}.llm_calls_default" not in counts  # moved out when its month's partition appeared
    assert counts[f"{schema}.llm_calls_p{older:%Y%m}"] == 2
    assert counts[f"{schema}.llm_calls_p{now:%Y%m}"] == 1
    with transaction(conn) as cur:  # idempotent
        assert ensure_call_partitions(cur, schema, [now]) == [f"llm_calls_p{now:%Y%m}"]

    result = apply_retention(conn, schema, 90)
    assert f"llm_calls_p{older:%Y%m}" in result["dropped_partitions"]
    assert f"llm_calls_p{now:%Y%m}" not in result["dropped_partitions"]
    with conn.cursor() as cur:
        cur.execute(f"select count(*), min(ts) from {schema}.llm_calls")
        count, oldest = cur.fetchone()
    assert count == 1 and oldest >= now - timedelta(days=90, seconds=5)


def test_concurrent_partition_creation(pg, conn, schema):
    migrate(conn, schema)
    month = datetime(2031, 7, 9, tzinfo=timezone.utc)
    errors = []
    barrier = threading.Barrier(6)

    def worker(i):
        c = psycopg2.connect(pg.dsn())
        try:
            barrier.wait()
            write_calls(c, schema, [{"ts": month + timedelta(hours=i), "model": "m"}])
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with conn.cursor() as cur:
        cur.execute(f"select tableoid::regclass::text, count(*) from {schema}.llm_calls group by 1")
        assert cur.fetchall() == [(f"{schema}.llm_calls_p203107", 6)]
