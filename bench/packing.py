"""Row packing end to end: `dbt run` of short classify prompts unpacked vs ``batch_size=16``.

    python bench/packing.py [--prompts 16000] [--batch-size 16] [--latency-ms 20] [--concurrency 64]

A temporary dbt project (bench/common.py's profile) against an embedded Postgres and the simulator
in its own process. Two runs of one model, ``pg_llm.classify('body', ..., batch_size=var('bs'))``,
each on a fresh audit schema and journal: unpacked (no batch_size), then packed. Compares the
simulator's requests, the labels row by row, and per run the ledger with the audit: llm_calls'
tokens and cost (equal), llm_results' cost (equal up to its 10 decimal places per row).
Target: >= 12x fewer requests, the same labels. ONE summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import BenchDatabase, dbt_command, dbt_env, ledger_matches, sim_args, write_dbt_project

from dbt_pg_llm.simulator import SimulatorProcess

MODEL = ("{{ pg_llm.llm_enrich('select id, body from %s', {'label': pg_llm.classify('body', "
         "labels=['positive', 'negative', 'neutral'], batch_size=var('bs', none))}) }}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    runs = {}
    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        source = db.source_table("source", args.prompts, args.prompts, "Classify review")
        root = Path(tmp) / "project"
        write_dbt_project(root, {"labelled": MODEL % source})
        env = dbt_env(db, sim.base_url, LLM_CONCURRENCY=str(args.concurrency))
        for name, size in (("unpacked", None), ("packed", args.batch_size)):
            audit = db.new_schema("bench_audit")
            env.update(LLM_AUDIT_SCHEMA=audit, LLM_JOURNAL_DIR=str(Path(tmp) / f"journal_{name}"))
            sim.reset()
            wall = dbt_command(root, env, "run", *(["--vars", json.dumps({"bs": size})] if size else []))
            stats = sim.stats()
            tokens, calls_cost = db.audit_totals(audit)
            results_cost = float(db.execute(f"select coalesce(sum(cost_usd), 0) from {audit}.llm_results")[0][0])
            db.execute(f"create table {db.schema}.labels_{name} as select id, label from {db.schema}.labelled")
            runs[name] = {"wall_s": round(wall, 1), "requests": stats["requests"],
                          "ledger_cost_usd": round(stats["cost_usd"], 8), "results_cost_usd": round(results_cost, 8),
                          "ledger_ok": ledger_matches(stats, tokens, calls_cost)
                          and abs(results_cost - stats["cost_usd"]) <= args.prompts * 0.5e-10}
            print(json.dumps({name: runs[name]}), flush=True)
        differ, labelled = db.execute(
            f"select count(*) filter (where u.label is distinct from p.label), count(p.label) "
            f"from {db.schema}.labels_unpacked u join {db.schema}.labels_packed p using (id)")[0]
    unpacked, packed = runs["unpacked"]["requests"], runs["packed"]["requests"]
    ratio = unpacked / max(packed, 1)
    same = differ == 0 and labelled == args.prompts
    ledger_ok = all(r["ledger_ok"] for r in runs.values())
    print(f"packing ({args.prompts} classify prompts, batch_size {args.batch_size}, latency {args.latency_ms} ms, "
          f"c={args.concurrency}): requests unpacked {unpacked} vs packed {packed} = {ratio:.1f}x fewer; "
          f"dbt run {runs['unpacked']['wall_s']}s vs {runs['packed']['wall_s']}s; "
          f"labels {'equal' if same else f'DIFFERENT ({differ} differ, {labelled} labelled)'}; "
          f"cost vs ledger {'equal' if ledger_ok else 'DIFFERENT'} "
          f"(${runs['unpacked']['ledger_cost_usd']} vs ${runs['packed']['ledger_cost_usd']})")
    return 0 if ratio >= 12 and same and ledger_ok else 1


if __name__ == "__main__":
    sys.exit(main())
