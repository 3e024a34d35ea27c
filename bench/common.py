"""What the bench scripts share: prices on both sides of the ledger, an embedded database with a
source table, the audit's totals, the ledger comparison every bench prints, and a temporary dbt
project (profile ``type: pg_llm``) run by ``dbt`` in a process of its own."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

__all__ = ["PRICE_IN", "PRICE_OUT", "sim_args", "BenchDatabase", "ledger_matches", "PROFILE", "PROJECT",
           "write_dbt_project", "enriched_model", "dbt_env", "dbt_command"]

PRICE_IN, PRICE_OUT = 0.15, 0.6  # $ per 1k tokens, in the simulator and the model config alike


def sim_args(latency_ms: int, *extra: str) -> list[str]:
    return ["--latency-ms", str(latency_ms), "--cost-per-1k-input", str(PRICE_IN),
            "--cost-per-1k-output", str(PRICE_OUT), *extra]


class BenchDatabase:
    """An embedded Postgres, an autocommit admin connection and a bench schema; every schema made
    through it (``new_schema``) is dropped on exit. ``extensions`` (e.g. ``("vector",)``): a database
    of its own is created with them (dropped on exit), so the shared one is never changed."""

    def __init__(self, extensions: tuple[str, ...] = ()):
        self.extensions = tuple(extensions)
        self._own_db: str | None = None

    def __enter__(self) -> "BenchDatabase":
        import dataclasses

        import psycopg2

        from dbt_pg_llm.embedded_pg import EmbeddedPostgres

        self._psycopg2 = psycopg2
        self.server = EmbeddedPostgres()
        self.info = self.server.start()
        if self.extensions:
            self._own_db = f"bench_{uuid.uuid4().hex[:8]}"
            shared = self.connect()
            shared.autocommit = True
            shared.cursor().execute(f'create database "{self._own_db}"')
            shared.close()
            self.info = dataclasses.replace(self.info, dbname=self._own_db)
            own = self.connect()
            own.autocommit = True
            for name in self.extensions:
                own.cursor().execute(f'create extension if not exists "{name}"')
            own.close()
        self.admin = self.connect()
        self.admin.autocommit = True
        self._schemas: list[str] = []
        self.schema = self.new_schema("bench", create=True)
        return self

    def connect(self):
        return self._psycopg2.connect(**self.info.connect_kwargs())

    def new_schema(self, prefix: str, create: bool = False) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self._schemas.append(name)
        if create:
            self.execute(f"create schema {name}")
        return name

    def execute(self, sql: str, params=None):
        with self.admin.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def source_table(self, name: str, rows: int, distinct: int, text: str = "Review") -> str:
        """``rows`` rows (id, body) holding ``distinct`` distinct prompts starting with ``text``."""
        table = f"{self.schema}.{name}"
        self.execute(f"create table {table} as select g as id, %s || ' number ' || (g %% %s) || "
                     "': sturdy, quiet, arrives on time.' as body from generate_series(1, %s) g", (text, distinct, rows))
        return table

    def audit_totals(self, audit: str) -> tuple[int, float]:
        """(tokens, cost) of every request in ``audit``.llm_calls."""
        tokens, cost = self.execute(f"select coalesce(sum(prompt_tokens + completion_tokens), 0), "
                                    f"coalesce(sum(cost_usd), 0) from {audit}.llm_calls")[0]
        return int(tokens), float(cost)

    def __exit__(self, *exc) -> None:
        try:
            for name in self._schemas:
                self.execute(f"drop schema if exists {name} cascade")
            self.admin.close()
            if self._own_db is not None:
                import dataclasses

                shared = self._psycopg2.connect(**dataclasses.replace(self.info, dbname="postgres").connect_kwargs())
                shared.autocommit = True
                shared.cursor().execute(f'drop database if exists "{self._own_db}" with (force)')
                shared.close()
        finally:
            self.server.release()


def ledger_matches(stats: dict, tokens: int, cost: float) -> bool:
    """The simulator's ledger (``stats``) equals our tokens and cost."""
    return stats["prompt_tokens"] + stats["completion_tokens"] == tokens and abs(stats["cost_usd"] - cost) < 1e-6


PROFILE = """bench:
  target: dev
  outputs:
    dev:
      type: pg_llm
      host: "{{ env_var('PGHOST') }}"
      port: "{{ env_var('PGPORT') | as_number }}"
      user: "{{ env_var('PGUSER') }}"
      password: "{{ env_var('PGPASSWORD', '') }}"
      dbname: "{{ env_var('PGDATABASE') }}"
      schema: "{{ env_var('DBT_SCHEMA') }}"
      threads: 1
      llm:
        default_model: sim
        audit_schema: "{{ env_var('LLM_AUDIT_SCHEMA') }}"
        journal_dir: "{{ env_var('LLM_JOURNAL_DIR') }}"
        on_error: "null"
        models:
          sim:
            provider: openai
            api_url: "{{ env_var('LLM_API_URL') }}"
            api_key: "{{ env_var('DBT_ENV_SECRET_LLM_API_KEY') }}"
            model_version: sim-1
            max_tokens: 64
            max_concurrency: "{{ env_var('LLM_CONCURRENCY') | as_number }}"
            timeout_ms: 30000
            cost_per_1k_input_tokens: %(in)s
            cost_per_1k_output_tokens: %(out)s
""" % {"in": PRICE_IN, "out": PRICE_OUT}

PROJECT = """name: bench
version: "1.0"
config-version: 2
profile: bench
model-paths: ["models"]
"""


def write_dbt_project(root: Path, models: dict[str, str]) -> None:
    """A dbt project in ``root`` (profiles.yml beside dbt_project.yml) with ``models`` (name -> SQL)."""
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text(PROJECT)
    (root / "profiles.yml").write_text(PROFILE)
    for name, sql in models.items():
        (root / "models" / f"{name}.sql").write_text(sql)


def enriched_model(source: str) -> str:
    """The SQL of a model enriching ``source`` (id, body) with ``summary`` = pg_llm.complete('body')."""
    return "{{ pg_llm.llm_enrich('select id, body from " + source + "', {'summary': pg_llm.complete('body')}) }}\n"


def dbt_env(db: BenchDatabase, sim_url: str, **extra: str) -> dict:
    """The environment PROFILE reads: ``db``'s server and bench schema, the simulator at ``sim_url``;
    ``extra`` sets (or leaves to the caller) LLM_AUDIT_SCHEMA, LLM_JOURNAL_DIR, LLM_CONCURRENCY."""
    info = db.info
    return {**os.environ, "PGHOST": info.host, "PGPORT": str(info.port), "PGUSER": info.user,
            "PGPASSWORD": info.password or "", "PGDATABASE": info.dbname, "DBT_SCHEMA": db.schema,
            "LLM_API_URL": sim_url, "DBT_ENV_SECRET_LLM_API_KEY": "sim-key",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **extra}


def dbt_command(root: Path, env: dict, *args: str, py_spy: str | None = None,
                program: list[str] | None = None) -> float:
    """Wall time of one dbt command in its own process, as a user runs it: the ``dbt`` executable, or
    ``program`` (argv taking dbt's arguments after it); under py-spy when asked."""
    prefix = [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--rate", "250", "--format", "raw", "-o", py_spy,
              "--"] \
        if py_spy else []
    t0 = time.perf_counter()
    done = subprocess.run([*prefix, *(program or [str(Path(sys.executable).parent / "dbt")]), *args,
                           "--project-dir", str(root), "--profiles-dir", str(root)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"dbt {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return wall


def process_cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds used so far by process ``pid`` (with ``children``: plus its exited, waited-for
    children's, e.g. a postmaster's backends); 0.0 if it is gone. Linux /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(db: "BenchDatabase") -> int:
    """The embedded server's postmaster (first line of postmaster.pid)."""
    return int((db.server.data_dir / "postmaster.pid").read_text().split()[0])


def children_cpu_s() -> float:
    """CPU seconds of this process's exited children (a dbt command run by ``dbt_command``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
