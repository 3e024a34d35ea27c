"""Issue 19: embeddings count like every other request in a real `dbt run`.

* an embed-only model writes its llm_runs row, and llm_runs = llm_calls = the simulator's ledger
  (requests, tokens), with a 429 retried and a bad input (one the simulator rejects with a 400)
  failing only its row: NULL and an llm_errors dead letter of kind invalid_input;
* estimate mode prices embed columns: requests = ceil(missing / inputs per request), input tokens
  and cost, an upper bound of what the run then pays;
* `dbt run` killed with SIGKILL mid-embedding (in a subprocess), then rerun: every text embedded,
  the requests in flight at the kill counted from the call spool (llm_calls = ledger);
* on the engine: a dead letter per failed text, resolved once a later run embeds it.
"""
from __future__ import annotations

import math
import re

import pytest

from dbt_pg_llm.models.cache import max_unjournaled
from dbt_pg_llm.operators.embed import MAX_INPUTS, embed_texts, embedding_fingerprint, embedding_key
from dbt_pg_llm.pg import RunContext
from dbt_pg_llm.simulator import SimulatorConfig
from tests.functional.dbt_harness import one_model_project
from tests.functional.test_pg_enrich import make_engine
from tests.functional.test_durability import kill_after_requests, start_dbt

pytestmark = pytest.mark.functional

N_CLEAN = 3000  # two requests of at most 2,048 inputs
CLEAN = ("{{ pg_llm.llm_enrich(\"select i as id, 'clean text number ' || i || ' about apples' as body "
         f"from generate_series(1, {N_CLEAN}) i\", {{'emb': pg_llm.embed('body', dimensions=8)}}) }}}}")
BAD = "[[fault:400]] a row the server rejects"
FAULTY = ("{{ pg_llm.llm_enrich(\"select * from (values (1, 'red apple', 'note one'), (2, 'green apple', "
          f"'[[fault:429*2]] rate limited twice'), (3, '{BAD}', 'note three'), (4, 'kernel bug', 'note four'), "
          "(5, 'apple pie', 'note five')) as t(id, body, note)\", "
          "{'emb': pg_llm.embed('body', dimensions=8), 'note_emb': pg_llm.embed('note', dimensions=8)}) }}")
# embed_chunks: 2 documents of 2,500 characters, chunks of 200 with overlap 50: 17 chunks each (all distinct)
CHUNKS = ("{{ pg_llm.embed_chunks(\"select i as doc_id, repeat('word' || i || ' ', 500) || i as body "
          "from generate_series(1, 2) i\", 'doc_id', 'body', chunk_size=200, overlap=50, dimensions=8) }}")
N_BIG = 5000  # three requests (2,048 + 2,048 + 904), all in flight at once (max_concurrency 32)
BIG = ("{{ pg_llm.llm_enrich(\"select i as id, 'document ' || i || ' of the killed run' as body "
       f"from generate_series(1, {N_BIG}) i\", {{'emb': pg_llm.embed('body', dimensions=8)}}) }}}}")


@pytest.fixture
def project(pg, simulator_factory, tmp_path):
    sim = simulator_factory(SimulatorConfig(fault_retry_after_s=0.05, latency_ms=1500))
    gen = one_model_project(tmp_path, pg, sim.base_url, "embed_runs", "emb_clean", CLEAN, "embr",
                            LLM_TOKENIZER="simulator")
    proj = next(gen)
    (proj.path / "models" / "emb_faulty.sql").write_text(FAULTY)
    (proj.path / "models" / "emb_big.sql").write_text(BIG)
    (proj.path / "models" / "emb_chunks.sql").write_text(CHUNKS)
    proj.sim = sim
    yield proj
    next(gen, None)


def _audit(project, sql: str):
    return project.query(sql.replace("AUDIT", f'"{project.audit}"'))


def test_estimate_prices_embed_columns_and_bounds_what_the_run_pays(project):
    out = project.run("compile", "-s", "emb_clean", "--vars", "{pg_llm_estimate: true}")
    line = next(m for m in out.text.splitlines() if "pg_llm estimate:" in m and ".emb:" in m)
    got = re.search(r"(\d+) of (\d+) distinct texts not embedded, (\d+) request\(s\), ~(\d+) input tokens at most, "
                    r"\$([0-9.]+)", line)
    assert got, line
    missing, distinct, requests, tokens, cost = (int(got[1]), int(got[2]), int(got[3]), int(got[4]), float(got[5]))
    assert project.sim.stats()["requests"] == 0  # estimating requests nothing
    assert missing == distinct == N_CLEAN and requests == math.ceil(N_CLEAN / MAX_INPUTS) == 2
    project.run("run", "-s", "emb_clean")
    ledger = project.sim.stats()
    paid = _audit(project, "select count(*), sum(prompt_tokens), sum(cost_usd) from AUDIT.llm_calls")[0]
    print(f"\n[estimate] {requests} requests, {tokens} tokens, ${cost} -> paid {ledger['requests']} requests, "
          f"{ledger['prompt_tokens']} tokens, ${paid[2]}")
    assert ledger["requests"] == requests and ledger["prompt_tokens"] == tokens == paid[1]
    assert cost >= float(paid[2]) > 0
    # nothing missing any more: the estimate says 0
    out = project.run("compile", "-s", "emb_clean", "--vars", "{pg_llm_estimate: true}")
    assert f"0 of {N_CLEAN} distinct texts not embedded, 0 request(s)" in out.text


def test_an_embed_only_run_records_llm_runs_equal_to_llm_calls_and_the_ledger(project):
    out = project.run("run", "-s", "emb_faulty")
    ledger = project.sim.stats()
    runs = _audit(project, "select run_id, status, requests, prompt_tokens, cost_usd from AUDIT.llm_runs")
    calls = _audit(project, "select run_id, count(*), sum(prompt_tokens), sum(cost_usd), "
                            "count(*) filter (where error_kind = 'rate_limited') from AUDIT.llm_calls group by 1")
    print(f"\n[ledger] embed-only run: simulator requests={ledger['requests']} tokens={ledger['prompt_tokens']} "
          f"faults={ledger['faults']}; llm_calls={calls}; llm_runs={runs}")
    assert len(runs) == 1 and runs[0][1] == "partial", runs  # one bad row: partial
    run_id, _, requests, tokens, cost = runs[0]
    assert calls == [(run_id, requests, tokens, cost, 2)]  # llm_runs = llm_calls, the two 429s among them
    assert requests == ledger["requests"] and tokens == ledger["prompt_tokens"]  # = the ledger
    assert ledger["faults"]["429"] == 2
    # the bad input failed alone: NULL, a dead letter of its kind; its request's other rows are stored
    rows = dict(project.query(f'select id, emb is not null from "{project.schema}".emb_faulty'))
    assert rows == {1: True, 2: True, 3: False, 4: True, 5: True}
    assert project.scalar(f'select count(*) from "{project.schema}".emb_faulty where note_emb is null') == 0
    fp = embedding_fingerprint(SimpleConfig(), 8)
    dead = _audit(project, "select key, error_kind, column_name, resolved_at from AUDIT.llm_errors")
    assert dead == [(embedding_key(fp, BAD), "invalid_input", "emb", None)], dead
    assert any("got no embedding" in w for w in out.warnings)


class SimpleConfig:  # what the fingerprint reads of the profile's default model `sim`
    provider = "openai"
    model_version = "sim-small"


def test_kill_9_mid_embedding_then_rerun_embeds_everything_and_llm_calls_match_the_ledger(project, tmp_path):
    # all three requests in flight (1.5 s each)
    kill_after_requests(project.sim, start_dbt(project, tmp_path, select="emb_big"),
                        math.ceil(N_BIG / MAX_INPUTS), settle_s=0.2)
    at_kill = project.sim.stats()["requests"]
    rows = _audit(project, "select run_id, status from AUDIT.llm_runs")
    assert len(rows) == 1 and rows[0][1] == "running", rows  # the killed run left its row
    project.run("run", "-s", "emb_big")
    ledger = project.sim.stats()
    embedded = project.scalar(f'select count(emb) from "{project.schema}".emb_big')
    calls = _audit(project, "select count(*), count(*) filter (where error_kind = 'lost') from AUDIT.llm_calls")[0]
    runs = _audit(project, "select sum(requests) from AUDIT.llm_runs")[0][0]
    print(f"\n[ledger] kill -9 mid-embedding: simulator requests at the kill={at_kill}, after the rerun="
          f"{ledger['requests']}; llm_calls={calls[0]} ({calls[1]} lost, from the killed run's call spool); "
          f"llm_runs requests={runs}; embedded {embedded} of {N_BIG}")
    assert embedded == N_BIG
    needed = math.ceil(N_BIG / MAX_INPUTS)
    # paid again: at most the requests in flight at the kill (none of their answers reached the journal)
    assert ledger["requests"] <= needed + min(at_kill, max_unjournaled(32))
    assert calls[0] == ledger["requests"] == runs  # the in-flight requests came back from the spool
    assert calls[1] == at_kill


def test_engine_a_dead_letter_per_failed_text_resolved_once_a_later_run_embeds_it(db, simulator):
    """embed_texts with a run: its llm_runs row (= its llm_calls), a dead letter of kind invalid_input
    for the text the server rejected once, resolved by the next run that embeds it."""
    connect, _, audit = db
    simulator.reset()
    engine = make_engine(simulator, model_version="text-embedding-3-small")
    flaky = "[[fault:400*1]] rejected the first time only"
    first = embed_texts(connect, engine, "sim", ["fine text", flaky], audit_schema=audit,
                        run=RunContext(run_id="r1", node_id="model.p.m"), column_name="emb")
    assert len(first.errors) == 1 and first.embedded == 1
    conn = connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'select error_kind, column_name, node_id, resolved_at is null from "{audit}".llm_errors')
            assert cur.fetchall() == [("invalid_input", "emb", "model.p.m", True)]
            cur.execute(f'select status, requests from "{audit}".llm_runs where run_id = %s', ("r1",))
            assert cur.fetchall() == [("partial", simulator.stats()["requests"])]
            second = embed_texts(connect, engine, "sim", ["fine text", flaky], audit_schema=audit,
                                 run=RunContext(run_id="r2", node_id="model.p.m"), column_name="emb")
            assert second.errors == {} and second.embedded == 1
            cur.execute(f'select count(*) filter (where resolved_at is null), count(*) from "{audit}".llm_errors')
            assert cur.fetchone() == (0, 1)
            cur.execute(f'select run_id, status, requests from "{audit}".llm_runs order by run_id')
            assert cur.fetchall() == [("r1", "partial", 3), ("r2", "success", 1)]
    finally:
        conn.close()


def test_estimate_prices_embed_chunks_as_the_run_pays(project):
    out = project.run("compile", "-s", "emb_chunks", "--vars", "{pg_llm_estimate: true}")
    line = next(m for m in out.text.splitlines() if "pg_llm estimate:" in m and ".embedding:" in m)
    got = re.search(r"(\d+) of \d+ distinct texts not embedded, (\d+) request\(s\), ~(\d+) input tokens", line)
    assert got, line
    project.run("run", "-s", "emb_chunks")
    ledger = project.sim.stats()
    chunks = project.scalar(f'select count(distinct chunk_text) from "{project.schema}".emb_chunks')
    assert (int(got[1]), int(got[2]), int(got[3])) == (chunks, ledger["requests"], ledger["prompt_tokens"]) == \
        (chunks, 1, ledger["prompt_tokens"])
    assert ledger["embedding_inputs"] == chunks > 2
