"""Embeddings end to end: `dbt run` of a pg_llm.embed column vs the same requests from a plain aiohttp loop.

    python bench/embeddings.py [--n 100000] [--dimensions 256] [--latency-ms 200] [--concurrency 16]

An embedded Postgres database with pgvector (``--real-array``: without) and N distinct texts, the simulator in its own process at a fixed latency. Timed:
``dbt run -s plain`` (dbt's own startup over the same table), ``dbt run -s embedded`` (llm_enrich with
``pg_llm.embed('body', model='embedder', dimensions=D)``, a fresh audit schema and journal), then a
warm rerun (must send 0 requests), then a plain aiohttp loop sending the same texts in the same
requests (2,048 inputs each, the same concurrency) and doing nothing with the answers.
Targets (issue 19.4): requests == ceil(N / 2048); (embedded - plain) <= 1.2x the aiohttp loop;
peak RSS of the dbt process <= 300 MB; warm rerun 0 requests. ``--repeat`` cold rounds (a fresh audit
schema and journal each; the dbt run and the loop side by side in each), the median round reported,
with each process's CPU (the simulator's is the same for both sides: on a 2-core box the dbt process
and Postgres compete with it for the second core). ONE summary line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import (PROFILE, BenchDatabase, children_cpu_s, dbt_command, dbt_env, postmaster_pid, process_cpu_s,
                    sim_args, write_dbt_project)

from dbt_pg_llm.operators.embed import MAX_INPUTS
from dbt_pg_llm.pg.migrations import migrate
from dbt_pg_llm.simulator import SimulatorProcess

EMBEDDER = """          embedder:
            provider: openai
            api_url: "{{ env_var('LLM_API_URL') }}"
            api_key: "{{ env_var('DBT_ENV_SECRET_LLM_API_KEY') }}"
            model_version: text-embedding-3-small
            max_concurrency: "{{ env_var('LLM_CONCURRENCY') | as_number }}"
            timeout_ms: 120000
            cost_per_1k_input_tokens: 0.00002
"""


async def aiohttp_loop(url: str, texts: list[str], dimensions: int, concurrency: int) -> float:
    """The same requests, sent by the simplest correct client: the floor for the engine's time."""
    import aiohttp

    groups = [texts[i:i + MAX_INPUTS] for i in range(0, len(texts), MAX_INPUTS)]
    sem = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sim-key"}) as session:
        async def one(group):
            async with sem, session.post(url, json={"model": "text-embedding-3-small", "input": group,
                                                    "dimensions": dimensions, "encoding_format": "base64"}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
        await asyncio.gather(*(one(g) for g in groups))
    return time.perf_counter() - t0


def _cpu(sim, db) -> dict:
    """CPU seconds so far of the simulator, Postgres (postmaster and its exited backends) and this
    process's exited children (the dbt commands) plus itself (the aiohttp loop)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return {"simulator": process_cpu_s(sim.process.pid), "postgres": process_cpu_s(postmaster_pid(db), children=True),
            "client": children_cpu_s() + me.ru_utime + me.ru_stime}


def _cpu_since(before: dict, sim, db) -> dict:
    db.admin.close()  # its backend's CPU is counted once it exits
    db.admin = db.connect()
    db.admin.autocommit = True
    return {k: round(v - before[k], 1) for k, v in _cpu(sim, db).items()}


def _settle(db, audit: str, timeout_s: float = 60.0) -> None:
    """Between rounds, untimed: the round's audit schema dropped, a checkpoint, and no autovacuum
    worker left (one vacuuming the previous round's 100,000 dead claims ran into the next round)."""
    db.execute(f"drop schema if exists {audit} cascade")
    db.execute("checkpoint")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and db.execute(
            "select count(*) from pg_stat_activity where backend_type = 'autovacuum worker'")[0][0]:
        time.sleep(0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="distinct texts")
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3,
                        help="cold rounds (a fresh audit schema and journal each), each a dbt run then the loop")
    parser.add_argument("--real-array", action="store_true",
                        help="a database without pgvector (llm_embeddings.vec and the column are real[])")
    args = parser.parse_args(argv)
    storage = "real[]" if args.real_array else "vector"
    rounds = []
    with BenchDatabase(extensions=() if args.real_array else ("vector",)) as db, \
            SimulatorProcess(sim_args(args.latency_ms)) as sim, tempfile.TemporaryDirectory() as tmp:
        source = f"{db.schema}.docs"
        db.execute(f"create table {source} as select g as id, 'document ' || g || ' about ' || "
                   "(array['apples','pears','kernels','trains','rivers','tax','jazz'])[g %% 7 + 1] || "
                   "' and its many small details' as body from generate_series(1, %s) g", (args.n,))
        texts = [t for (t,) in db.execute(f"select body from {source} order by id")]
        root = Path(tmp) / "project"
        model = ("{{ config(materialized='table') }}\n{{ pg_llm.llm_enrich('select id, body from " + source
                 + "', {'emb': pg_llm.embed('body', model='embedder', dimensions=" + str(args.dimensions) + ")}) }}\n")
        write_dbt_project(root, {"plain": f"{{{{ config(materialized='table') }}}}\nselect id, body from {source}\n",
                                 "embedded": model})
        (root / "profiles.yml").write_text(PROFILE + EMBEDDER)
        for i in range(args.repeat):
            env = dbt_env(db, sim.base_url, LLM_AUDIT_SCHEMA=db.new_schema("bench_audit"),
                          LLM_JOURNAL_DIR=str(Path(tmp) / f"journal{i}"), LLM_CONCURRENCY=str(args.concurrency))
            conn = db.connect()
            try:
                migrate(conn, env["LLM_AUDIT_SCHEMA"])
            finally:
                conn.close()
            if i == 0:
                dbt_command(root, env, "run", "-s", "plain")  # untimed: the first parse
            plain = dbt_command(root, env, "run", "-s", "plain")
            sim.reset()
            cpu = _cpu(sim, db)
            embedded = dbt_command(root, env, "run", "-s", "embedded")
            cpu_embedded = _cpu_since(cpu, sim, db)
            cold = sim.stats()
            if i == 0:
                sim.reset()
                dbt_command(root, env, "run", "-s", "embedded")
                warm_requests = sim.stats()["requests"]
            filled = db.execute(f"select count(emb) from {db.schema}.embedded")[0][0]
            sim.reset()
            cpu = _cpu(sim, db)
            loop_s = asyncio.run(aiohttp_loop(sim.base_url.rstrip("/") + "/embeddings", texts, args.dimensions,
                                              args.concurrency))
            cpu_loop = _cpu_since(cpu, sim, db)
            _settle(db, env["LLM_AUDIT_SCHEMA"])
            rounds.append({"plain_s": round(plain, 2), "embedded_s": round(embedded, 2), "aiohttp_s": round(loop_s, 2),
                           "ratio": round((embedded - plain) / max(loop_s, 1e-9), 3), "requests": cold["requests"],
                           "embedding_inputs": cold["embedding_inputs"], "filled": filled,
                           "cpu_s_embedded": cpu_embedded, "cpu_s_loop": cpu_loop})
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest dbt process of all
    expected = math.ceil(args.n / MAX_INPUTS)
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    row = {"n": args.n, "dimensions": args.dimensions, "storage": storage, "latency_ms": args.latency_ms,
           "expected_requests": expected, "median_ratio": median["ratio"], "peak_rss_mb": round(rss_mb),
           "warm_requests": warm_requests, "rounds": rounds}
    print(json.dumps(row))
    ok = all(r["requests"] == expected and r["filled"] == args.n for r in rounds) and warm_requests == 0
    cpu_e, cpu_l = median["cpu_s_embedded"], median["cpu_s_loop"]
    all_ratios = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
    print(f"embeddings ({args.n} distinct texts, {args.dimensions} dims, {storage}, latency {args.latency_ms} ms, "
          f"concurrency {args.concurrency}, {len(rounds)} cold rounds): {median['requests']} requests (ceil(n/"
          f"{MAX_INPUTS}) = {expected}); median round: dbt run {median['embedded_s']:.1f}s - plain "
          f"{median['plain_s']:.1f}s = {median['embedded_s'] - median['plain_s']:.1f}s vs aiohttp loop "
          f"{median['aiohttp_s']:.1f}s -> {median['ratio']:.2f}x (target <= 1.2; all rounds: "
          f"{all_ratios}); peak RSS "
          f"{rss_mb:.0f} MB (target <= 300); warm rerun {warm_requests} requests; every row filled: "
          f"{all(r['filled'] == args.n for r in rounds)}; CPU s (simulator/postgres/client) embedded "
          f"{cpu_e['simulator']}/{cpu_e['postgres']}/{cpu_e['client']}, loop {cpu_l['simulator']}/{cpu_l['postgres']}/"
          f"{cpu_l['client']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
