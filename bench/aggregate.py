"""pg_llm.llm_aggregate's tree at scale: 100 groups x 1,000 rows with a small context window.

    python bench/aggregate.py [--groups 100] [--rows 1000] [--max-input-tokens 2000] [--fan-in 4]
                              [--latency-ms 2] [--concurrency 32]

An embedded Postgres table of groups x rows reviews (a few dozen tokens each), the simulator in its
own process, the engine's fill (``pg/fill.py``) for every level, as ``dbt run`` does it. Prints ONE
line: requests of the cold run (the simulator's ledger) vs the minimum for the tree (the sum over
groups of its nodes: each node once), the tree's depth, the warm rerun's requests, and the requests
re-paid after adding 1 row to 1 group (should be that group's depth), with what fixed-size chunks
(positional) would have re-paid for the same insertion, then the same over --trials insertions.
"""
from __future__ import annotations

import argparse
import random
import time

from common import PRICE_IN, PRICE_OUT, BenchDatabase, sim_args

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.operators.aggregate import SYSTEM_PHRASE, default_chunk_rows, row_key, run_aggregate
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorProcess
from dbt_pg_llm.models.tokens import token_counter

WORDS = ("strap", "buckle", "lid", "zipper", "battery", "screen", "hinge", "charger", "seam", "handle")
VERBS = ("broke", "leaks", "cracked", "wobbles", "frayed", "died", "stuck", "rattles")


def _rows(groups: int, rows: int) -> list[tuple[str, int, str]]:
    rnd = random.Random(7)
    out = []
    for g in range(groups):
        for i in range(rows):
            out.append((f"P-{g:03d}", g * rows + i, f"review {i}: the {rnd.choice(WORDS)} {rnd.choice(VERBS)} "
                                                     f"after {rnd.randint(1, 90)} days, {rnd.choice(WORDS)} fine"))
    return out


def _fixed_repaid(keys_before: list[str], keys_after: list[str], size: int) -> int:
    """Leaves whose texts change under fixed-size (positional) chunks of ``size`` rows, after the
    insertion: every chunk from the insertion point on."""
    before = [tuple(keys_before[i:i + size]) for i in range(0, len(keys_before), size)]
    after = [tuple(keys_after[i:i + size]) for i in range(0, len(keys_after), size)]
    return sum(1 for c in after if c not in set(before))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--max-input-tokens", type=int, default=2000)
    ap.add_argument("--fan-in", type=int, default=4)
    ap.add_argument("--latency-ms", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--chunk-rows", type=int, default=None, help="default: default_chunk_rows(max_input_tokens)")
    ap.add_argument("--trials", type=int, default=10, help="single-row insertions measured one after the other")
    args = ap.parse_args()

    with BenchDatabase() as db, SimulatorProcess(sim_args(args.latency_ms)) as sim:
        table = f"{db.schema}.reviews"
        db.execute(f"create table {table} (product text, id int, body text)")
        with db.admin.cursor() as cur:
            cur.executemany(f"insert into {table} values (%s, %s, %s)", _rows(args.groups, args.rows))
        audit = db.new_schema("agg_audit")
        settings = LlmSettings.from_dict({"default_model": "sim", "models": {"sim": {
            "api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 64, "max_concurrency": args.concurrency,
            "cost_per_1k_input_tokens": PRICE_IN, "cost_per_1k_output_tokens": PRICE_OUT}}})
        config = settings.config_for("sim")
        spec = ColumnSpec.from_dict({"name": "answer", "kind": "complete", "prompt_sql": "pg_llm_prompt",
                                     "system": SYSTEM_PHRASE, "max_tokens": 64}, "sim")
        fp = spec.fingerprint(config)
        chunk_rows = args.chunk_rows or default_chunk_rows(args.max_input_tokens)

        def run(name):
            engine = build_engine(settings, journal=False, sinks=[BufferedSink()])
            ctx = RunContext(name, "model.bench.aggregate")
            try:
                started = time.monotonic()
                out = run_aggregate(db.connect, table, "product", "body", "Summarise the complaints",
                                    fingerprint=fp, audit_schema=audit, budget=args.max_input_tokens,
                                    chunk_rows=chunk_rows, fan_in=args.fan_in, count=token_counter(config).count,
                                    fill=lambda s: fill_column(db.connect, engine, s, spec, audit_schema=audit,
                                                               run=ctx))
                return out, time.monotonic() - started
            finally:
                engine.close()

        (cold, keys), cold_s = run("cold")
        cold_requests = sim.stats()["requests"]
        minimum = sum(cold.nodes_by_level)  # distinct nodes of all trees: each paid once at best
        (warm, _), warm_s = run("warm")
        warm_requests = sim.stats()["requests"] - cold_requests
        tokens = token_counter(config).count
        room = args.max_input_tokens - tokens("Summarise the complaints\n\nItems (0):\n")
        packed = sum(-(-int(n) // room) for (n,) in db.execute(
            f"select sum(octet_length(body) + 3) from {table} group by product"))  # leaves if packed full
        trials, third = [], None
        for k in range(args.trials):  # one new row in one group each time, measured one by one
            target = f"P-{(42 + 7 * k) % args.groups:03d}"
            rows_before = sorted(row_key(None, t) for (t,) in db.execute(
                f"select body from {table} where product = %s", (target,)))
            new = f"review new {k}: the zipper snapped on day {k}, handle fine"
            db.execute(f"insert into {table} values (%s, %s, %s)", (target, -1 - k, new))
            spent = sim.stats()["requests"]
            (third, keys3), third_s = run(f"plus-one-row-{k}")
            repaid = sim.stats()["requests"] - spent
            others = sum(1 for g in keys if g != target and keys3[g] != keys[g])
            fixed = _fixed_repaid(rows_before, sorted(rows_before + [row_key(None, new)]), chunk_rows)
            trials.append((repaid, third.depth[target], others, fixed, third_s))
            keys = keys3
        ledger_ok = db.execute(f"select count(*) from {audit}.llm_calls where not cached")[0][0] == sim.stats()["requests"]
        first = trials[0]
        exact = sum(1 for t in trials if t[0] == t[1])
        print(f"aggregate {args.groups} groups x {args.rows} rows, max_input_tokens {args.max_input_tokens}, "
              f"chunk_rows {chunk_rows}, fan_in {args.fan_in}: cold {cold_requests} requests vs tree minimum {minimum} "
              f"({cold_requests / minimum:.3f}x; nodes per level {cold.nodes_by_level}, max depth "
              f"{max(cold.depth.values())}; leaves {cold.nodes_by_level[0]} vs {packed} if packed full: "
              f"{cold.nodes_by_level[0] / packed:.2f}x) in {cold_s:.1f}s; warm rerun {warm_requests} requests "
              f"({warm_s:.1f}s); +1 row in 1 group: re-paid {first[0]} = depth {first[1]}: {first[0] == first[1]}, "
              f"other groups re-paid {first[2]}, fixed-size chunks would re-pay {first[3]} leaves ({first[4]:.1f}s); "
              f"over {len(trials)} single-row insertions: re-paid == depth in {exact}/{len(trials)}, re-paid "
              f"{sum(t[0] for t in trials)} vs depths {sum(t[1] for t in trials)}, other groups "
              f"{sum(t[2] for t in trials)}, fixed-size leaves {sum(t[3] for t in trials)}; llm_calls = ledger: {ledger_ok}")

if __name__ == "__main__":
    main()
