"""A request whose connection never opened cannot have been billed: its spend reservation is
refunded (decision 0025). A request that was sent and got no answer may have been: kept."""
from __future__ import annotations

import socket
import threading

import pytest

from dbt_pg_llm import Engine, MemoryBackend, Model, ModelInput, ResultCache, SpendLimit, estimate_cost
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column

pytestmark = pytest.mark.functional

PRICES = {"cost_per_1k_input_tokens": 0.5, "cost_per_1k_output_tokens": 1.5}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_for(url: str, **config) -> Engine:
    settings = {"api_url": url, "model_version": "sim-small", "max_tokens": 32, "timeout_ms": 2000,
                "retry": {"max_retries": 2, "base_delay_ms": 1, "max_delay_ms": 5}, **PRICES, **config}
    return Engine([Model("m", settings)], cache=ResultCache(MemoryBackend()))


def test_a_closed_port_spends_nothing_of_the_cap_through_a_fill(db, pg_conn):
    connect, schema, audit = db
    with pg_conn.cursor() as cur:
        cur.execute(f'create table "{schema}".reviews as select i, \'review \' || i as body '
                    "from generate_series(1, 40) i")
    engine = engine_for(f"http://127.0.0.1:{closed_port()}/v1")
    try:
        report = fill_column(connect, engine, f'"{schema}".reviews',
                             ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "model": "m"}),
                             audit_schema=audit, run=RunContext("closed-port-run"), max_cost_usd=25.0,
                             max_error_rate=1.0)
    finally:
        engine.close()
    assert report.errors == 40 and report.budget_skipped == 0
    # before: every attempt (40 keys x 3) kept its worst case: "$0.3... of the $25 cap spent"
    assert report.budget_spent_usd == 0.0
    assert "$0.000000 of the $25.0000 cap spent" in report.summary()


def test_a_request_sent_without_an_answer_keeps_its_worst_case():
    """A server that accepts and reads the request but never answers: the timeout after sending
    may have been billed, so the reservation stays spent (the conservative half of the rule)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # read by the kernel, never answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    engine = engine_for(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout_ms=1000,
                        retry={"max_retries": 0})
    limit = SpendLimit(25.0)
    try:
        out = engine.call("m", ModelInput("hello"), use_cache=False, spend_limit=limit)
        model = engine.model("m")
        worst = estimate_cost(model.config, ModelInput("hello").with_defaults(model.config.temperature,
                                                                            model.config.max_tokens))
    finally:
        engine.close()
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()
    assert out.error_kind.value == "timeout"
    assert limit.spent_usd == pytest.approx(worst) and worst > 0
