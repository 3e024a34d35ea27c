"""pg_llm.similarity_join through `dbt run`: the k nearest right rows of every left row, with an HNSW
index on the right embeddings (pg_llm.vector_index) vs the exact scan (no index), on synthetic
clustered vectors (like embeddings: points around topic centres). Prints ONE line: both times,
recall@k of the HNSW join against the exact one, and the index build time.

    python bench/vector_join.py                     # 10,000 x 100,000, dim 64, k 10 (minutes: the exact scan)
    python bench/vector_join.py --n 1000 --m 10000  # a quick run

Runs in a database of its own on the embedded Postgres (created with `create extension vector`,
dropped at the end); the join models read the tables directly, so only the join is timed (dbt's
execution_time of each model, from run_results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from common import dbt_command, write_dbt_project  # noqa: E402

JOIN = ("{{{{ config(materialized='table', pre_hook='set hnsw.ef_search = {ef}') }}}}\n"
        "{{{{ pg_llm.similarity_join(api.Relation.create(schema='vb', identifier='left_docs'), "
        "api.Relation.create(schema='vb', identifier='{right}'), 'embedding', 'embedding', k={k}) }}}}\n")


def _load(cur, n: int, m: int, dim: int, clusters: int, noise: float) -> None:
    cur.execute("create extension vector; create schema vb; select setseed(0.19)")
    cur.execute(f"create table vb.centres as select c, array(select random_normal() from generate_series(1, {dim}) "
                "where c > 0) as v from generate_series(1, %s) c", (clusters,))
    for name, rows in (("left_docs", n), ("right_plain", m)):
        cur.execute(f"create table vb.{name} as select g as id, (select array_agg(v[j] + {noise} * random_normal() "
                    f"order by j) from generate_series(1, {dim}) j)::vector({dim}) as embedding "
                    f"from generate_series(1, %s) g join vb.centres on c = 1 + g %% {clusters}", (rows,))
    cur.execute("create table vb.right_hnsw as table vb.right_plain; analyze vb.left_docs, vb.right_plain, vb.right_hnsw")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="left rows")
    ap.add_argument("--m", type=int, default=100_000, help="right rows")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.6, help="spread of the points around their centre")
    ap.add_argument("--ef-search", type=int, default=40, help="hnsw.ef_search (pgvector's default: 40)")
    args = ap.parse_args()

    import psycopg2

    from dbt_pg_llm.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres()
    info = server.start()
    db = f"vector_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**info.connect_kwargs())
    admin.autocommit = True
    admin.cursor().execute(f'create database "{db}"')
    try:
        conn = psycopg2.connect(**info.connect_kwargs(db))
        conn.autocommit = True
        cur = conn.cursor()
        t0 = time.perf_counter()
        _load(cur, args.n, args.m, args.dim, args.clusters, args.noise)
        load_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "project"
            write_dbt_project(root, {
                "join_hnsw": JOIN.format(ef=args.ef_search, right="right_hnsw", k=args.k),
                "join_exact": JOIN.format(ef=args.ef_search, right="right_plain", k=args.k),
            })
            env = {**os.environ, "PGHOST": info.host, "PGPORT": str(info.port), "PGUSER": info.user,
                   "PGPASSWORD": info.password or "", "PGDATABASE": db, "DBT_SCHEMA": "vb_out",
                   "LLM_API_URL": "http://127.0.0.1:9/v1", "DBT_ENV_SECRET_LLM_API_KEY": "unused",
                   "LLM_AUDIT_SCHEMA": "vb_audit", "LLM_JOURNAL_DIR": str(Path(tmp) / "journal"),
                   "LLM_CONCURRENCY": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
            # the index, as a user makes it: the vector_index macro's statement (run-operation)
            (root / "macros").mkdir()
            (root / "macros" / "index_right.sql").write_text(
                "{% macro index_right() %}{% set rel = api.Relation.create(database=target.database, schema='vb', "
                "identifier='right_hnsw') %}{% do run_query(pg_llm.vector_index('embedding', relation=rel)) %}"
                "{% do run_query('commit') %}{% endmacro %}\n")
            t0 = time.perf_counter()
            dbt_command(root, env, "run-operation", "index_right")
            index_s = time.perf_counter() - t0
            cur.execute("select count(*) from pg_indexes where schemaname = 'vb' and tablename = 'right_hnsw'")
            if cur.fetchone()[0] != 1:
                raise SystemExit("the HNSW index was not created")
            times = {}
            for model in ("join_hnsw", "join_exact"):
                dbt_command(root, env, "run", "-s", model)
                results = json.loads((root / "target" / "run_results.json").read_text())["results"]
                times[model] = results[0]["execution_time"]
        cur.execute("select count(*) from vb_out.join_hnsw h join vb_out.join_exact e on e.id = h.id and e.right_id = h.right_id")
        hits = cur.fetchone()[0]
        cur.execute("select count(*) from vb_out.join_exact")
        exact_rows = cur.fetchone()[0]
        conn.close()
    finally:
        admin.cursor().execute(f'drop database if exists "{db}" with (force)')
        admin.close()
        server.release()
    recall = hits / exact_rows if exact_rows else float("nan")
    print(f"vector_join: {args.n:,} x {args.m:,} rows, dim {args.dim}, k {args.k}: HNSW {times['join_hnsw']:.1f} s "
          f"vs exact {times['join_exact']:.1f} s ({times['join_exact'] / times['join_hnsw']:.1f}x), "
          f"recall@{args.k} {recall:.3f} (ef_search {args.ef_search}); index build {index_s:.1f} s "
          f"(dbt run-operation), data load {load_s:.1f} s")


if __name__ == "__main__":
    main()
