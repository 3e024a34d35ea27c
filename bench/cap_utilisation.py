"""Is the estimate tight, and does a capped run use its cap? The example project (integration_tests/).

    python bench/cap_utilisation.py [--cap-shares 0.5 0.01 0.002] [--tokenizer simulator] [--latency-ms 5]

The example project, copied to a temporary directory, against an embedded Postgres and the
simulator in its own process, priced like the profile's ``sim`` model ($0.00015 / $0.0006 per 1k
input / output tokens). Its LLM models (``--select tag:llm``: the SQL models that call llm_enrich;
the Python model is not estimated by dbt, so it is left out of both sides; so is the guaranteed
cascade, ``--exclude tag:guaranteed_cascade``, whose oracle the simulator would bill at sim's price):

1. ``dbt compile --select tag:llm --vars '{pg_llm_estimate: true}'`` (the README's command): the
   estimate, an upper bound of what the run will pay;
2. ``dbt run --select tag:llm`` on a fresh audit schema and journal, no cap: what it really costs
   (the simulator's ledger);
3. for each of ``--cap-shares``, the same run again from scratch with ``llm.max_cost_usd_per_run``
   = that share of the full run's cost (``max_error_rate`` 1: the keys the cap stops are not the
   models' failure here): what it billed before the cap stopped it. A small cap (a few dozen
   requests) shows how much of a cap one worst case can leave unspent.

Targets (issue 17.2): estimate / actual <= 1.5 (and >= 1: an upper bound), each capped run bills
>= 90% of its cap and never more. ONE summary line (JSON lines per step before it).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BenchDatabase, dbt_env

from dbt_pg_llm.simulator import SimulatorProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "integration_tests"
PRICE_IN, PRICE_OUT = 0.00015, 0.0006  # the example profile's sim model
_TOTAL = re.compile(r"selection total so far \$([0-9.]+)")


def dbt(root: Path, env: dict, *args: str, check: bool = True) -> str:
    """stdout of one dbt command in its own process (raises with its tail when it fails and ``check``)."""
    done = subprocess.run([str(Path(sys.executable).parent / "dbt"), *args, "--project-dir", str(root),
                           "--profiles-dir", str(root)], env=env, capture_output=True, text=True)
    if done.returncode != 0 and check:
        raise SystemExit(f"dbt {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-shares", type=float, nargs="+", default=[0.5, 0.01, 0.002],
                        help="the caps, as shares of the full run's cost")
    parser.add_argument("--tokenizer", default="simulator",
                        help="the profile's LLM_TOKENIZER: simulator (its exact count) or auto (bytes, any server)")
    parser.add_argument("--latency-ms", type=int, default=5)
    parser.add_argument("--select", nargs="+", default=["tag:llm"])
    # the guaranteed cascade's oracle is sim_large, priced 16x sim in the profile, but the simulator
    # bills every request at sim's price: its cost would not be comparable with the estimate or the cap
    parser.add_argument("--exclude", nargs="*", default=["tag:guaranteed_cascade"])
    args = parser.parse_args(argv)
    with BenchDatabase() as db, tempfile.TemporaryDirectory() as tmp, \
            SimulatorProcess(["--latency-ms", str(args.latency_ms), "--cost-per-1k-input", str(PRICE_IN),
                              "--cost-per-1k-output", str(PRICE_OUT)]) as sim:
        root = Path(tmp) / "example"
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
        env = dbt_env(db, sim.base_url, LLM_TOKENIZER=args.tokenizer, LLM_MAX_COST_USD_PER_RUN="None",
                      LLM_AUDIT_SCHEMA=db.new_schema("bench_audit"), LLM_JOURNAL_DIR=str(Path(tmp) / "journal_1"))
        dbt(root, env, "seed")
        select = ["--select", *args.select, *(["--exclude", *args.exclude] if args.exclude else [])]

        out = dbt(root, env, "compile", *select, "--vars", "{pg_llm_estimate: true}")
        lines = [line for line in out.splitlines() if "pg_llm estimate:" in line]
        estimate = max(float(m.group(1)) for m in map(_TOTAL.search, lines) if m)
        print(json.dumps({"estimate_lines": len(lines), "estimate_usd": estimate}), flush=True)

        sim.reset()
        dbt(root, env, "run", *select)
        full = sim.stats()
        actual = full["cost_usd"]
        print(json.dumps({"full_run": {"requests": full["requests"], "cost_usd": round(actual, 6)}}), flush=True)
        # per column: the estimate's line against what its answers cost (llm_results)
        paid = {f"{n}.{c}": float(cost) for n, c, cost in db.execute(
            f"select node_id, column_name, sum(cost_usd) from {env['LLM_AUDIT_SCHEMA']}.llm_results "
            "group by 1, 2")}
        for line in lines:
            column, usd = re.search(r"estimate: (\S+): .*?\$([0-9.]+); selection", line).groups()
            print(json.dumps({"column": column, "estimate_usd": float(usd), "paid_usd": round(paid.get(column, 0), 6),
                              "tokens": re.search(r"~(\d+ input \+ \d+ output)", line).group(1)}), flush=True)

        used = {}
        for i, share in enumerate(args.cap_shares):
            cap = round(share * actual, 8)
            env.update(LLM_MAX_COST_USD_PER_RUN=str(cap), LLM_MAX_ERROR_RATE="1", LLM_ON_BUDGET="warn",
                       LLM_AUDIT_SCHEMA=db.new_schema("bench_audit"), LLM_JOURNAL_DIR=str(Path(tmp) / f"journal_c{i}"))
            sim.reset()
            dbt(root, env, "run", *select, check=False)
            capped = sim.stats()
            used[share] = capped["cost_usd"] / cap
            print(json.dumps({"capped_run": {"cap_usd": cap, "requests": capped["requests"],
                                             "cost_usd": round(capped["cost_usd"], 8), "used": round(used[share], 4)}}),
                  flush=True)
    ratio = estimate / actual
    ok = 1.0 <= ratio <= 1.5 and all(0.9 <= u <= 1.0 for u in used.values())
    caps = ", ".join(f"{share:g} of the run: {u:.1%}" for share, u in used.items())
    print(f"cap_utilisation: tokenizer {args.tokenizer}: estimate ${estimate:.4f} vs actual ${actual:.4f} = "
          f"{ratio:.2f}x (target 1-1.5x); capped runs billed ({caps}) of their cap (target >= 90%, never above) "
          f"over {full['requests']} requests uncapped: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
