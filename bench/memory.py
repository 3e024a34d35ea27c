"""Memory at scale: peak RSS of `dbt run` (and of a bare fill) over 100,000 and 1,000,000 rows holding 50,000 distinct prompts.

    python bench/memory.py [--mode both|dbt|fill] [--rows 100000,1000000] [--distinct 50000]
                           [--latency-ms 5] [--concurrency 256] [--tracemalloc N]

One embedded Postgres, one simulator process, one source table per size (N rows, D distinct prompts).
Each measurement runs in a process of its own (peak RSS only grows within a process) that reports
its own ``ru_maxrss``:
- dbt: ``dbt run -s enriched`` (bench/common.py's ``type: pg_llm`` project; the model enriches the
  table with ``pg_llm.complete``) through a small wrapper process running dbtRunner, with a fresh
  audit schema and journal per size, so every distinct prompt is paid once. This is what users run.
  Once, before the sizes: ``dbt run -s plain`` (a plain SQL model: dbt's own footprint).
- fill: ``fill_column`` alone in a child process (the engine without dbt), fresh audit schema.
Per measurement the simulator's ledger is compared with the audit's tokens and cost, and the
process's RSS at its end is split into anonymous and file-backed memory (/proc/self/status).
``--tracemalloc N`` makes each dbt wrapper print (stderr, kept in the JSON) the N biggest allocation
sites of its traced peak (slow: for finding a leak, not for the figures).
Targets: <= 250 MB at both sizes, 1M within 1.1x of 100k (the dbt process). ONE summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import (PRICE_IN, PRICE_OUT, BenchDatabase, dbt_command, dbt_env, enriched_model, ledger_matches,
                    sim_args, write_dbt_project)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux


def rss_parts_mb() -> dict:
    """This process's resident memory now, split: anonymous (heap, stacks) vs file-backed (mapped
    files: libraries, SQLite's mmap of the journal) vs shared memory."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {f"{name.lower()}_mb": round(int(fields[name].split()[0]) / 1024, 1)
            for name in ("RssAnon", "RssFile", "RssShmem") if name in fields}


def fill_child(args) -> int:
    """One fill, in this process; prints a JSON line with its peak RSS."""
    import psycopg2

    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

    conninfo = json.loads(os.environ["BENCH_PG"])
    engine = Engine([Model("sim", {"api_url": os.environ["BENCH_SIM"], "model_version": "sim-1", "max_tokens": 32,
                                   "max_concurrency": args.concurrency, "cost_per_1k_input_tokens": PRICE_IN,
                                   "cost_per_1k_output_tokens": PRICE_OUT})], sinks=[BufferedSink()])
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body"}, default_model="sim")
    t0 = time.perf_counter()
    report = fill_column(lambda: psycopg2.connect(**conninfo), engine, args.table, spec, audit_schema=args.audit,
                         run=RunContext(run_id=f"bench-memory-{uuid.uuid4().hex[:6]}"), window=args.concurrency * 4)
    wall = time.perf_counter() - t0
    engine.close()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), **rss_parts_mb(), "wall_s": round(wall, 1),
                      "errors": report.errors}))
    return 0


class TracedPeak:
    """tracemalloc on; a poll keeps a snapshot of the highest traced size seen (the peak's holders)."""

    def __init__(self, poll_s: float = 5.0):
        import tracemalloc

        self._tm, self._poll_s, self.snapshot, self._high = tracemalloc, poll_s, None, 0
        tracemalloc.start(4)
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            current = self._tm.get_traced_memory()[0]
            if current > self._high * 1.02:
                self._high, self.snapshot = current, self._tm.take_snapshot()

    def top(self, n: int) -> list[str]:
        self._stop.set()
        stats = (self.snapshot or self._tm.take_snapshot()).statistics("traceback")[:n]
        return [f"{s.size / 2**20:.1f} MB in {s.count} blocks at " + " <- ".join(
            f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}" for f in reversed(s.traceback)) for s in stats]


def dbt_child(out: str, argv: list[str]) -> int:
    """``dbt <argv>`` through dbtRunner in this process; writes its peak RSS (and traced peak) to ``out``."""
    top_n = 0
    if argv[:1] == ["--tracemalloc"]:
        top_n, argv = int(argv[1]), argv[2:]
    from dbt.cli.main import dbtRunner

    traced = TracedPeak() if top_n else None  # after dbt's imports: they hold no per-row state

    t0 = time.perf_counter()
    result = dbtRunner().invoke(argv)
    row = {"peak_rss_mb": peak_rss_mb(), **rss_parts_mb(), "wall_s": round(time.perf_counter() - t0, 1),
           "success": result.success}
    if traced:
        row.update(traced_high_mb=round(traced._high / 2**20, 1), traced_top=traced.top(top_n))
    Path(out).write_text(json.dumps(row))
    return 0 if result.success else 1


def wrapped_dbt(root: Path, env: dict, tmp: str, tracemalloc: int, *args: str) -> dict:
    """Peak RSS (and wall time) of ``dbt <args>`` run by dbt_child in a process of its own."""
    out = Path(tmp) / f"rss_{uuid.uuid4().hex[:6]}.json"
    dbt_command(root, env, *args, program=[sys.executable, __file__, "--dbt-child", str(out),
                                           *(["--tracemalloc", str(tracemalloc)] if tracemalloc else [])])
    return json.loads(out.read_text())


def measure_fill(db: BenchDatabase, sim, table: str, concurrency: int) -> dict:
    audit = db.new_schema("bench_audit")
    env = {**os.environ, "BENCH_PG": json.dumps(db.info.connect_kwargs()), "BENCH_SIM": sim.base_url}
    done = subprocess.run([sys.executable, __file__, "--fill-child", "--table", table, "--audit", audit,
                           "--concurrency", str(concurrency)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fill of {table} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "audit": audit}


def measure_dbt(db: BenchDatabase, sim_url: str, table: str, rows: int, args, tmp: str) -> dict:
    root = Path(tmp) / f"project_{rows}"
    write_dbt_project(root, {"enriched": enriched_model(table)})
    env = dbt_env(db, sim_url, LLM_AUDIT_SCHEMA=db.new_schema("bench_audit"), LLM_CONCURRENCY=str(args.concurrency),
                  LLM_JOURNAL_DIR=str(Path(tmp) / f"journal_{rows}"))
    row = wrapped_dbt(root, env, tmp, args.tracemalloc, "run", "-s", "enriched")
    total, filled = db.execute(f"select count(*), count(summary) from {db.schema}.enriched")[0]
    return {**row, "audit": env["LLM_AUDIT_SCHEMA"], "filled": filled, "complete": total == filled == rows}


def with_ledger(db: BenchDatabase, sim, row: dict) -> dict:
    stats = sim.stats()
    tokens, cost = db.audit_totals(row["audit"])
    return {**row, "requests": stats["requests"], "audit_tokens": tokens, "audit_cost_usd": round(cost, 6),
            "ledger_tokens": stats["prompt_tokens"] + stats["completion_tokens"],
            "ledger_cost_usd": round(stats["cost_usd"], 6), "ledger_ok": ledger_matches(stats, tokens, cost)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dbt-child"]:
        return dbt_child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("both", "dbt", "fill"), default="both")
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--distinct", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N")
    parser.add_argument("--fill-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--audit", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fill_child:
        return fill_child(args)

    from dbt_pg_llm.simulator import SimulatorProcess

    modes = ("dbt", "fill") if args.mode == "both" else (args.mode,)
    sizes = [int(r) for r in args.rows.split(",")]
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    plain = None
    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            # a size-specific prompt text: each size pays for its own keys
            table = db.source_table(f"rows_{rows}", rows, args.distinct, f"Review of set {rows}")
            if "dbt" in modes and plain is None:
                write_dbt_project(Path(tmp) / "plain", {"plain": f"select id, body from {table}\n"})
                plain = wrapped_dbt(Path(tmp) / "plain", dbt_env(db, sim.base_url, LLM_AUDIT_SCHEMA="unused",
                                    LLM_CONCURRENCY="1", LLM_JOURNAL_DIR=str(Path(tmp) / "unused")),
                                    tmp, 0, "run", "-s", "plain")
                print(json.dumps({"mode": "dbt plain model", **plain}), flush=True)
            for mode in modes:
                sim.reset()
                row = measure_dbt(db, sim.base_url, table, rows, args, tmp) if mode == "dbt" \
                    else measure_fill(db, sim, table, args.concurrency)
                results[mode].append(with_ledger(db, sim, {"mode": mode, "rows": rows, **row}))
                print(json.dumps(results[mode][-1]), flush=True)
    return summarize(results, plain, args.distinct)


def count(rows: int) -> str:
    return f"{rows / 1e6:g}M" if rows >= 1_000_000 else f"{rows / 1e3:g}k"


def summarize(results: dict[str, list[dict]], plain: dict | None, distinct: int) -> int:
    def sizes(mode: str) -> str:
        runs = results[mode]
        return ", ".join(f"{count(r['rows'])} rows {r['peak_rss_mb']:.0f} MB" for r in runs) \
            + f" ({count(runs[-1]['rows'])} / {count(runs[0]['rows'])} = " \
              f"{runs[-1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.2f}x)"

    every = [r for runs in results.values() for r in runs]
    ledger_ok = all(r["ledger_ok"] for r in every)
    paid_once = all(r["requests"] == distinct for r in every)
    complete = all(r.get("complete", True) and not r.get("errors") for r in every)
    target = results.get("dbt") or results["fill"]
    ok = ledger_ok and paid_once and complete and all(r["peak_rss_mb"] <= 250 for r in target) \
        and target[-1]["peak_rss_mb"] <= 1.1 * target[0]["peak_rss_mb"]
    parts = [f"dbt run peak RSS {sizes('dbt')}"] if "dbt" in results else []
    parts += [f"plain-model dbt run {plain['peak_rss_mb']:.0f} MB"] if plain else []
    parts += [f"fill process {sizes('fill')}"] if "fill" in results else []
    print(f"memory ({distinct:,} distinct prompts): " + "; ".join(parts)
          + f"; {'one request per distinct prompt, every row filled' if paid_once and complete else 'REQUESTS OR ROWS OFF'}"
          + f"; ledger vs audit tokens/cost {'equal' if ledger_ok else 'DIFFERENT'}"
          + f"; targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
