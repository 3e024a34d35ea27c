"""What the bench scripts share: prices on both sides of the ledger, an embedded database with a
source table, the audit's totals, and the ledger comparison every bench prints."""
from __future__ import annotations

import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

__all__ = ["PRICE_IN", "PRICE_OUT", "sim_args", "BenchDatabase", "ledger_matches"]

PRICE_IN, PRICE_OUT = 0.15, 0.6  # $ per 1k tokens, in the simulator and the model config alike


def sim_args(latency_ms: int, *extra: str) -> list[str]:
    return ["--latency-ms", str(latency_ms), "--cost-per-1k-input", str(PRICE_IN),
            "--cost-per-1k-output", str(PRICE_OUT), *extra]


class BenchDatabase:
    """An embedded Postgres, an autocommit admin connection and a bench schema; every schema made
    through it (``new_schema``) is dropped on exit."""

    def __enter__(self) -> "BenchDatabase":
        import psycopg2

        from dbt_pg_llm.embedded_pg import EmbeddedPostgres

        self._psycopg2 = psycopg2
        self.server = EmbeddedPostgres()
        self.info = self.server.start()
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
        finally:
            self.server.release()


def ledger_matches(stats: dict, tokens: int, cost: float) -> bool:
    """The simulator's ledger (``stats``) equals our tokens and cost."""
    return stats["prompt_tokens"] + stats["completion_tokens"] == tokens and abs(stats["cost_usd"] - cost) < 1e-6
