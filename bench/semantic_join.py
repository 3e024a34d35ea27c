"""pg_llm.semantic_join end to end: `dbt run` of the same join with each plan, calls and time.

    python bench/semantic_join.py [--n 1000] [--m 50] [--candidates 5] [--latency-ms 5] [--concurrency 32]

An embedded Postgres with N left texts (four words of a small vocabulary) and M right texts (two-word
phrases; the simulator's rule holds when the phrase occurs in the left text) and an embedding per
row (real[], a bag of words), the simulator in its own process at a fixed latency.
Each plan runs in a fresh audit schema and journal (nothing shared, so each pays its own calls):
nested (N x M filter calls), blocked (top `candidates` right rows per left row), classify (one
multi-label call per left text), auto (must pick the fewest calls). Prints ONE line: each plan's
requests (the simulator's ledger), wall time and ratio vs nested, and whether nested and classify
returned the same pairs.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from common import BenchDatabase, dbt_command, dbt_env, sim_args, write_dbt_project

from dbt_pg_llm.simulator import SimulatorProcess

WORDS = ("apple", "bread", "kernel", "river", "guitar", "garden", "engine", "coffee", "winter", "planet",
         "market", "camera", "forest", "violin", "harbor", "ticket", "marble", "rocket", "silver", "tunnel")
PLANS = ("nested", "blocked", "classify", "auto")
JOIN = ("{{{{ config(materialized='table') }}}}\n{{{{ pg_llm.semantic_join('select * from {schema}.sj_left', "
        "'select * from {schema}.sj_right', 'body', 'body', 'Are these two about the same thing?', left_id='id', "
        "right_id='id', left_embedding='emb', right_embedding='emb', candidates={candidates}, plan='{plan}') }}}}\n")


def _rows(n: int, seed: int, right: bool) -> list[tuple[int, str, list[float]]]:
    """Left: four words + a number (each text distinct); right: distinct two-word phrases. The simulator's
    rule holds when the phrase occurs in the left text (about 1% of pairs)."""
    rnd = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        picked = rnd.sample(WORDS, 2 if right else 4)
        text = " ".join(picked) if right else " ".join(picked) + f" note {len(out) + 1}"
        if text in seen:
            continue
        seen.add(text)
        vec = [1.0 if w in picked else 0.0 for w in WORDS]  # a bag of words: texts sharing words are close
        out.append((len(out) + 1, text, vec))
    return out


def _load(db: BenchDatabase, name: str, rows) -> None:
    db.execute(f"create table {db.schema}.{name} (id int primary key, body text, emb real[])")
    with db.admin.cursor() as cur:
        cur.executemany(f"insert into {db.schema}.{name} values (%s, %s, %s)", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="left rows")
    ap.add_argument("--m", type=int, default=50, help="right rows")
    ap.add_argument("--candidates", type=int, default=5, help="blocked plan: right rows per left row")
    ap.add_argument("--latency-ms", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()

    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        _load(db, "sj_left", _rows(args.n, 1, right=False))
        _load(db, "sj_right", _rows(args.m, 2, right=True))
        root = Path(tmp) / "project"
        write_dbt_project(root, {f"join_{p}": JOIN.format(schema=db.schema, candidates=args.candidates, plan=p)
                                 for p in PLANS})
        results = {}
        for plan in PLANS:
            env = dbt_env(db, sim.base_url, LLM_AUDIT_SCHEMA=db.new_schema(f"sj_audit_{plan}"),
                          LLM_JOURNAL_DIR=str(Path(tmp) / f"journal_{plan}"), LLM_CONCURRENCY=str(args.concurrency))
            sim.reset()
            wall = dbt_command(root, env, "run", "-s", f"join_{plan}")
            pairs = db.execute(f"select count(*) from {db.schema}.join_{plan}")[0][0]
            results[plan] = (sim.stats()["requests"], wall, pairs)
        same = db.execute(f"select count(*) from ((select id, right_id from {db.schema}.join_nested except "
                          f"select id, right_id from {db.schema}.join_classify) union all (select id, right_id from "
                          f"{db.schema}.join_classify except select id, right_id from {db.schema}.join_nested)) d")[0][0] == 0
    nested_calls, nested_s, _ = results["nested"]
    parts = [f"{plan} {calls:,} requests {wall:.1f} s ({pairs:,} pairs"
             + (f", {nested_calls / calls:.1f}x fewer calls, {nested_s / wall:.1f}x faster than nested)" if plan != "nested"
                and calls else ")") for plan, (calls, wall, pairs) in results.items()]
    auto_ok = results["auto"][0] == min(results[p][0] for p in ("nested", "blocked", "classify"))
    print(f"semantic_join {args.n:,} x {args.m:,} (latency {args.latency_ms} ms, concurrency {args.concurrency}, "
          f"candidates {args.candidates}): " + "; ".join(parts)
          + f"; nested and classify pairs identical: {same}; auto chose the fewest calls: {auto_ok}")
    if not (same and auto_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
