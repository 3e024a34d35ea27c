"""Embeddings through the provider batch API (issue 19.1): operators/embed_batch.py against the
simulator's OpenAI Batch API with /v1/embeddings lines and real Postgres. Submit in one run, collect
in the next (vectors in llm_embeddings, one llm_calls row per billed line at the batch price, the
simulator's batch ledger = llm_calls), an errored line is a dead letter resubmitted next time, a
warm rerun sends nothing, and the normal path never requests a text of an open batch."""
from __future__ import annotations

import time

import pytest
from test_pg_enrich import make_engine, q

from dbt_pg_llm.operators.embed import embed_texts, fetch_vectors, embedding_fingerprint, embedding_key
from dbt_pg_llm.operators.embed_batch import submit_embeddings
from dbt_pg_llm.pg import RunContext
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

EMBED = {"model_version": "text-embedding-3-small", "cost_per_1k_input_tokens": 0.02}


@pytest.fixture
def bsim(simulator_factory):
    return simulator_factory(SimulatorConfig(batch_delay_s=0.5, cost_per_1k_input=0.02))


def test_submit_collect_next_run_batch_price_ledger_equals_llm_calls_warm_rerun_free(db, pg_conn, bsim):
    connect, _, audit = db
    engine = make_engine(bsim, **EMBED)
    texts = [f"review {i} about green apples" for i in range(20)] + ["bad one [[fault:400]]", None]
    texts = texts + texts[:5]  # duplicates: one line each
    first = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit,
                        run=RunContext("submit-run", "n"), mode="batch")
    assert first.batched == 21 and len(first.batches) == 1 and first.requests == 0
    assert bsim.stats()["requests"] == 0  # nothing through the live endpoint
    assert q(pg_conn, f'select count(*) from "{audit}".llm_embeddings')[0][0] == 0
    again = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit, mode="batch")
    assert again.batched == 0 and again.in_batch == 21 and bsim.stats()["batches_created"] == 1
    # the normal path does not pay for a text that is in an open batch
    time.sleep(0.6)
    second = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit,
                         run=RunContext("collect-run", "n"), mode="batch")
    stats = bsim.stats()
    assert stats["requests"] == 0 and stats["batch_requests"] == 20 and stats["batch_errors"] == 1
    assert second.cached == 20 and second.batched == 1 and stats["batches_created"] == 2  # the bad one again
    fp = embedding_fingerprint(engine.model("sim").config, 16)
    conn = connect()
    try:
        vecs = fetch_vectors(conn, audit, [embedding_key(fp, t) for t in texts[:20]])
    finally:
        conn.close()
    assert len(vecs) == 20 and {len(v) for v in vecs.values()} == {16}
    calls = q(pg_conn, f"""select count(*), sum(prompt_tokens), sum(cost_usd), count(distinct run_id),
                                  min(run_id), min(operation) from "{audit}".llm_calls""")[0]
    assert calls[0] == 20 and calls[1] == stats["batch_prompt_tokens"]  # one row per billed line
    assert float(calls[2]) == pytest.approx(stats["batch_cost_usd"]) == pytest.approx(calls[1] / 1000 * 0.02 * 0.5)
    assert calls[3:] == (1, "submit-run", "embed")  # billed to the run that submitted (and reserved) them
    dead = q(pg_conn, f'select error_kind, resolved_at is null from "{audit}".llm_errors')
    assert dead == [("invalid_input", True)]
    batches = q(pg_conn, f'select status, open, answered, failed from "{audit}".llm_batches order by submitted_at')
    assert batches[0] == ("completed", False, 20, 1) and batches[1][1] is True
    # warm rerun through the normal path: 0 requests, and the bad text's open batch is not paid again
    warm = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit)
    assert warm.requests == 0 and warm.cached == 20 and warm.in_batch == 1 and bsim.stats()["requests"] == 0


def test_spend_cap_reserves_the_batch_worst_case_or_submits_nothing(db, pg_conn, bsim):
    connect, _, audit = db
    engine = make_engine(bsim, **EMBED)
    texts = [f"some longer text number {i} " * 20 for i in range(10)]
    rep = submit_embeddings(connect, engine, "sim", texts, audit_schema=audit, max_cost_usd=1e-9)
    assert rep.batched == 0 and rep.budget_skipped == 10 and bsim.stats()["batches_created"] == 0
    assert all(m.startswith("budget:") for m in rep.errors.values())
    assert q(pg_conn, f'select count(*) from "{audit}".llm_batches')[0][0] == 0


def test_fewer_missing_texts_than_min_keys_are_embedded_now(db, pg_conn, bsim):
    connect, _, audit = db
    engine = make_engine(bsim, **EMBED)
    rep = embed_texts(connect, engine, "sim", ["one apple", "two pears"], audit_schema=audit, mode="batch",
                      batch={"enabled": True, "min_keys": 10})
    assert rep.embedded == 2 and rep.batched == 0 and bsim.stats()["requests"] == 1
    assert bsim.stats()["batches_created"] == 0


def test_a_batch_line_answered_with_nan_is_a_dead_letter_still_billed(db, pg_conn, bsim):
    """The collector leaves a NaN vector out of llm_embeddings and fails its key (invalid_output), and
    its billed line keeps its llm_calls row: the ledger still equals llm_calls."""
    connect, _, audit = db
    engine = make_engine(bsim, **EMBED)
    texts = [f"batch text {i} about pears" for i in range(4)] + ["batch vector [[fault:nan]]"]
    first = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit,
                        run=RunContext("submit-nan", "n"), mode="batch")
    assert first.batched == 5
    time.sleep(0.6)
    embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit, run=RunContext("collect-nan", "n"),
                mode="batch")
    stats = bsim.stats()
    fp = embedding_fingerprint(engine.model("sim").config, 16)
    assert q(pg_conn, f'select count(*) from "{audit}".llm_embeddings')[0][0] == 4
    assert q(pg_conn, f'select key, error_kind from "{audit}".llm_errors') == [(embedding_key(fp, texts[-1]),
                                                                             "invalid_output")]
    rows, tokens = q(pg_conn, f'select count(*), sum(prompt_tokens) from "{audit}".llm_calls')[0]
    assert rows == 5 and tokens == stats["batch_prompt_tokens"]
