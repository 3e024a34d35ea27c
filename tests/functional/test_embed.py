"""Embeddings on the engine (issue 19.1/19.4): operators/embed.py against the simulator's
/v1/embeddings and real Postgres: paid once per distinct text (ledger), a warm rerun sends nothing,
many inputs per request, 429s retried, one bad input fails only its row, long inputs truncated,
one llm_calls row per request with the ledger's tokens, kill -9 loses nothing paid."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import diskcache
import pytest
from test_pg_enrich import make_engine, q

from dbt_pg_llm.models.cache import ResultCache

from dbt_pg_llm.models.journal import DiskJournal
from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.operators.embed import embed, embed_texts, embedding_fingerprint, embedding_key
from dbt_pg_llm.operators.embed_journal import PENDING_DIR, RequestJournal
from dbt_pg_llm.pg import RunContext
from dbt_pg_llm.simulator import SimulatorConfig

pytestmark = pytest.mark.functional

EMBED_MODEL = {"model_version": "text-embedding-3-small"}


@pytest.fixture
def sim(simulator):
    simulator.reset()
    return simulator


def audit_of(pg_conn):
    return f"{pg_conn.schema}_audit"


def calls(pg_conn, audit):
    return q(pg_conn, f'select count(*), coalesce(sum(prompt_tokens), 0), count(*) filter (where http_status = 429) '
                      f'from "{audit}".llm_calls where operation = %s', ("embed",))[0]


def test_paid_once_per_distinct_text_many_inputs_per_request_warm_rerun_free(db, pg_conn, sim):
    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    texts = [f"review number {i % 130} about apples" for i in range(400)] + [None]
    rep = embed_texts(connect, engine, "sim", texts, dimensions=64, audit_schema=audit,
                      run=RunContext("r1", "n"), max_inputs=50)
    stats = sim.stats()
    assert rep.errors == {} and rep.distinct_keys == rep.embedded == 130
    assert stats["requests"] == rep.requests == math.ceil(130 / 50)  # requests = ceil(distinct / per request)
    assert stats["embedding_inputs"] == 130 and all(n == 1 for n in stats["by_prompt_sha256"].values())
    n, tokens, _ = calls(pg_conn, audit)
    assert n == stats["requests"] and tokens == stats["prompt_tokens"] > 0
    dims, = q(pg_conn, f'select distinct dims from "{audit}".llm_embeddings')[0]
    assert dims == 64
    again = embed_texts(connect, engine, "sim", texts, dimensions=64, audit_schema=audit, max_inputs=50)
    assert sim.stats()["requests"] == stats["requests"] and again.cached == 130 and again.requests == 0
    # another dimension is another key: paid again, stored beside
    embed_texts(connect, engine, "sim", texts[:3], dimensions=32, audit_schema=audit)
    assert sim.stats()["embedding_inputs"] == 133


def test_vectors_of_texts_sharing_words_are_closer(db, sim):
    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    a, b, c = embed(connect, engine, "sim", ["fresh red apple pie", "apple pie with cream", "kernel scheduler bug"],
                    dimensions=128, audit_schema=audit)
    cos = lambda x, y: sum(i * j for i, j in zip(x, y))  # unit vectors
    assert len(a) == 128 and cos(a, b) > cos(a, c) + 0.2 and cos(a, b) > cos(b, c) + 0.2


def test_a_429_is_retried_and_each_attempt_is_an_llm_calls_row(db, pg_conn, simulator_factory):
    connect, _, audit = db
    limited = simulator_factory(SimulatorConfig(fault_retry_after_s=0.05))
    engine = make_engine(limited, max_retries=3, **EMBED_MODEL)
    texts = [f"text {i}" for i in range(11)] + ["[[fault:429*2]] twice rate limited"]
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, max_inputs=4)
    stats = limited.stats()
    assert rep.errors == {} and rep.embedded == 12 and stats["faults"] == {"429": 2}
    n, _, limited_rows = calls(pg_conn, audit)
    assert n == stats["requests"] == 3 + 2 and limited_rows == 2


def test_a_bad_input_fails_only_its_row_and_long_inputs_are_truncated(db, sim):
    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    good = [f"good text {i}" for i in range(7)]
    too_long = "word " * 9000  # 11,250 tokens: over the server's 8,192 and (with truncate) cut to fit
    # the engine allows 20,000 tokens, the server only 8,192: the server's 400 is what isolates the row
    rep = embed_texts(connect, engine, "sim", good + ["word " * 9000 + "x"], audit_schema=audit,
                      max_input_tokens=20_000)
    fp = embedding_fingerprint(engine.model("sim").config, None)
    assert set(rep.errors) == {embedding_key(fp, "word " * 9000 + "x")}
    assert "invalid_input" in next(iter(rep.errors.values())) and rep.embedded == 7
    vecs = embed(connect, engine, "sim", good + [too_long], audit_schema=audit)  # default: truncate to 8,191
    assert all(v is not None for v in vecs)


def test_anthropic_has_no_embeddings_a_config_error_naming_the_key(db, sim):
    connect, _, audit = db
    engine = make_engine(sim, provider="anthropic", model_version="claude-3-5-haiku-latest")
    with pytest.raises(ConfigError, match=r"models\.sim\.provider.*no embeddings endpoint"):
        embed_texts(connect, engine, "sim", ["x"], audit_schema=audit)


KILLED = textwrap.dedent("""
    import json, sys
    import psycopg2
    from dbt_pg_llm import BufferedSink, Engine, Model
    from dbt_pg_llm.models.cache import ResultCache
    from dbt_pg_llm.models.journal import DiskJournal
    from dbt_pg_llm.operators.embed import _Filler
    from dbt_pg_llm.operators import embed_texts

    args = json.loads(sys.argv[1])
    # die right after the journal write of the first request, before Postgres sees it
    original = _Filler.write
    def write(self, rows, tokens_each=0):
        print("journaled", flush=True)
        import time; time.sleep(60)
    _Filler.write = write
    engine = Engine([Model("sim", {"api_url": args["api_url"], "model_version": "text-embedding-3-small",
                                   "api_key": "sk-test-0123456789"})],
                    cache=ResultCache(DiskJournal(args["journal"])), sinks=[BufferedSink()])
    embed_texts(lambda: psycopg2.connect(**args["pg"]), engine, "sim", args["texts"], audit_schema=args["audit"],
                max_inputs=1000, claim_timeout_s=1)
""")


def test_kill_9_after_paying_loses_nothing_the_rerun_pays_nothing(db, pg, sim, tmp_path):
    connect, _, audit = db
    texts = [f"durable text {i}" for i in range(40)]
    journal = str(tmp_path / "journal")
    args = {"api_url": sim.base_url, "pg": pg.connect_kwargs(), "audit": audit, "texts": texts, "journal": journal}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, json.dumps(args)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "journaled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    paid = sim.stats()["requests"]
    assert paid == 1
    engine = make_engine(sim, **EMBED_MODEL)
    engine.cache = ResultCache(DiskJournal(journal))
    started = time.monotonic()
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, claim_timeout_s=1)
    assert rep.from_journal == 40 and rep.requests == 0 and sim.stats()["requests"] == paid
    assert time.monotonic() - started < 5
    assert len(RequestJournal(engine.cache)) == 0  # the killed run's request was absorbed, then dropped


def test_a_request_is_journaled_as_one_entry_before_its_copy_and_dropped_after(db, pg_conn, sim, tmp_path, monkeypatch):
    """Issue 19.4's speed: one journal entry per request, not a serialised ModelOutput per text
    (~29 us each, ~2.8 s of a 100,000-text fill); it is there while the COPY runs, gone after."""
    from dbt_pg_llm.operators.embed import _Filler

    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    engine.cache = ResultCache(DiskJournal(str(tmp_path / "journal")))
    seen = []
    original = _Filler.write

    def write(self, rows, tokens_each=0):
        pending = RequestJournal(engine.cache)
        try:
            seen.append((len(pending), len(engine.cache)))  # (request entries, per-key entries) at COPY time
        finally:
            pending.close()
        return original(self, rows, tokens_each)

    monkeypatch.setattr(_Filler, "write", write)
    texts = [f"journal entry text {i}" for i in range(40)]
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, max_inputs=10)
    assert rep.embedded == 40 and rep.requests == 4 and len(seen) == 4
    assert all(entries >= 1 and per_key == 0 for entries, per_key in seen)
    assert len(engine.cache) == 0 and len(RequestJournal(engine.cache)) == 0
    assert q(pg_conn, f'select count(*) from "{audit}".llm_embeddings')[0][0] == 40


def test_a_request_is_journaled_as_the_answer_received_and_absorbed_from_it(db, pg_conn, sim, tmp_path,
                                                                            monkeypatch):
    """The journal keeps the answer's body as it came (no re-encoding of 2,048 vectors); a killed
    process's entry (here: one left in place by failing its COPY) is absorbed into per-key entries
    whose vectors are the answer's, and the next fill writes them without a request."""
    from dbt_pg_llm.operators.embed import _Filler

    connect, _, audit = db
    journal_dir = str(tmp_path / "journal")
    engine = make_engine(sim, **EMBED_MODEL)
    engine.cache = ResultCache(DiskJournal(journal_dir))
    bodies = []

    def write(self, rows, tokens_each=0):
        with diskcache.Cache(os.path.join(journal_dir, PENDING_DIR)) as pending:
            bodies.extend(pending.get(k)["body"] for k in pending)
        raise RuntimeError("killed before the COPY")

    monkeypatch.setattr(_Filler, "write", write)
    texts = [f"body journal text {i}" for i in range(6)]
    with pytest.raises(RuntimeError):
        embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit)
    assert len(bodies) == 1 and json.loads(bodies[0])["object"] == "list"  # the provider's own bytes
    assert sim.stats()["requests"] == 1
    monkeypatch.undo()
    engine = make_engine(sim, **EMBED_MODEL)
    engine.cache = ResultCache(DiskJournal(journal_dir))
    rep = embed_texts(connect, engine, "sim", texts, dimensions=16, audit_schema=audit)
    assert rep.from_journal == 6 and rep.requests == 0 and sim.stats()["requests"] == 1
    fp = embedding_fingerprint(engine.model("sim").config, 16)
    by_index = {d["index"]: d["embedding"] for d in json.loads(bodies[0])["data"]}
    stored = dict(q(pg_conn, f'select key, vec::real[] from "{audit}".llm_embeddings'))
    from dbt_pg_llm.pg.vectors import vector_from_b64
    assert all(stored[embedding_key(fp, t)] == pytest.approx(vector_from_b64(by_index[i])) for i, t in enumerate(texts))


def test_an_entry_of_the_earlier_json_form_is_still_absorbed(tmp_path):
    """A journal written by the previous version (JSON text with base64 vectors) is read after an upgrade."""
    cache = ResultCache(DiskJournal(str(tmp_path / "journal")))
    with diskcache.Cache(str(tmp_path / "journal" / PENDING_DIR)) as old:
        old.set("old", json.dumps({"keys": ["k1", "k2"], "vectors": ["AACAPw==", "AAAAQA=="], "model": "m",
                                   "tokens_each": 3, "cost_each": 0.5}))
    pending = RequestJournal(cache)
    assert pending.absorb() == 2 and len(pending) == 0
    assert cache.get("k1").text == "AACAPw==" and cache.get("k2").tokens.prompt == 3


def test_claims_are_released_a_few_requests_at_a_time_once_their_vectors_are_written(db, pg_conn, sim, monkeypatch):
    """Another run waiting on a text stops waiting soon after its request is written, not at the end
    of a long fill: written keys are released every _RELEASE_EVERY keys, each after its COPY committed."""
    import importlib

    from dbt_pg_llm.pg.claims import Claims

    monkeypatch.setattr(importlib.import_module("dbt_pg_llm.operators.embed"), "_RELEASE_EVERY", 20)

    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    released = []
    original = Claims.release

    def release(self, keys):
        keys = list(keys)
        if keys:
            stored = {k for (k,) in q(pg_conn, f'select key from "{audit}".llm_embeddings where key = any(%s)', (keys,))}
            released.append((len(keys), len(stored)))
        return original(self, keys)

    monkeypatch.setattr(Claims, "release", release)
    texts = [f"released claim text {i}" for i in range(40)]
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, max_inputs=10)
    assert rep.embedded == 40 and rep.requests == 4
    assert released == [(20, 20)] * 2  # two requests' keys at a time, all written; nothing left for the end
    assert q(pg_conn, f'select count(*) from "{audit}".llm_claims')[0][0] == 0


def test_the_openai_sdk_parses_the_simulators_embeddings(sim):
    import openai

    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test-0123456789", max_retries=0)
    got = client.embeddings.create(model="text-embedding-3-small", input=["apple pie", "apple tart"], dimensions=48)
    assert [len(d.embedding) for d in got.data] == [48, 48] and got.usage.prompt_tokens > 0
    as_floats = client.embeddings.create(model="text-embedding-3-small", input="apple pie", dimensions=48,
                                         encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(got.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError):  # 2,049 inputs: over the input-array limit
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)


def test_a_python_models_session_embeds_a_series_on_the_same_cache(db, sim):
    import pandas as pd

    from dbt_pg_llm.operators.frame import LlmFrameSession

    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    series = pd.Series(["apple pie", None, "apple pie", "kernel bug"], index=["a", "b", "c", "d"], name="body")
    got = LlmFrameSession(connect, engine, audit, RunContext("py", "model.p.py"), "sim").embed(series, dimensions=16)
    assert list(got.index) == ["a", "b", "c", "d"] and got["b"] is None and got["a"] == got["c"] and len(got["d"]) == 16
    assert sim.stats()["embedding_inputs"] == 2
    again = embed(connect, engine, "sim", ["apple pie"], dimensions=16, audit_schema=audit)  # the SQL path's cache
    assert again[0] == got["a"] and sim.stats()["embedding_inputs"] == 2


def test_the_spend_cap_reserves_each_request_before_it_is_sent(db, pg_conn, sim):
    connect, _, audit = db
    engine = make_engine(sim, cost_per_1k_input_tokens=1.0, **EMBED_MODEL)
    texts = [f"capped text number {i}" for i in range(40)]  # 6 tokens each by the engine's bound: $0.06 a request
    # the four requests reserve before any is answered: two fit under $0.13, two are skipped (not sent)
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, max_inputs=10, max_cost_usd=0.13,
                      run=RunContext("cap", "n"))
    assert rep.embedded == 20 and rep.budget_skipped == 20 and sim.stats()["embedding_inputs"] == 20
    paid = q(pg_conn, f'select sum(cost_usd) from "{audit}".llm_calls where operation = %s', ("embed",))[0][0]
    assert 0 < rep.cost_usd <= 0.13 and float(paid) == pytest.approx(rep.cost_usd)


def test_two_runs_embedding_overlapping_texts_pay_each_text_once(db, simulator_factory, in_threads):
    connect, _, audit = db
    slow = simulator_factory(SimulatorConfig(latency_ms=300))
    texts_a = [f"shared text {i}" for i in range(30)] + [f"only a {i}" for i in range(10)]
    texts_b = [f"only b {i}" for i in range(10)] + [f"shared text {i}" for i in range(30)]
    embed_texts(connect, make_engine(slow, **EMBED_MODEL), "sim", ["warm up the audit schema"], audit_schema=audit)
    reports = in_threads(lambda texts, run: embed_texts(connect, make_engine(slow, **EMBED_MODEL), "sim", texts,
                                                        audit_schema=audit, run=RunContext(run, "n"), max_inputs=8,
                                                        claim_timeout_s=5),
                         [(texts_a, "a"), (texts_b, "b")])
    assert all(r.errors == {} for r in reports)
    assert slow.stats()["embedding_inputs"] == 1 + 50  # each distinct text once, across both runs
    # every key of each run: paid by it, waited for (the other run's claim), or already stored
    assert sum(r.embedded for r in reports) == 50 and sum(r.embedded + r.waited + r.cached for r in reports) == 80


def test_known_missing_texts_that_are_stored_after_all_are_not_paid_again(db, sim):
    """embed_relation's anti-join says which texts have no vector; if another run wrote some since,
    the lookup of each claimed slice finds them: nothing is requested twice."""
    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    texts = [f"known missing text {i}" for i in range(12)]
    embed_texts(connect, engine, "sim", texts[:8], audit_schema=audit)
    paid = sim.stats()["requests"]
    rep = embed_texts(connect, engine, "sim", texts, audit_schema=audit, known_missing=True)
    assert rep.embedded == 4 and sim.stats()["embedding_inputs"] == 12
    assert sim.stats()["requests"] == paid + 1


def test_a_vector_with_nan_fails_its_row_alone_paid_and_dead_lettered(db, pg_conn, sim):
    """A server answering NaN for one input (pgvector would refuse the request's whole COPY, and the
    journal would replay that failure forever): that row fails as invalid_output, a dead letter;
    the request's other rows are stored; its tokens stay in llm_calls (it was paid)."""
    connect, _, audit = db
    engine = make_engine(sim, **EMBED_MODEL)
    texts = [f"finite text {i}" for i in range(5)] + ["broken vector [[fault:nan]]"]
    rep = embed_texts(connect, engine, "sim", texts, dimensions=8, audit_schema=audit, run=RunContext("nan-run", "n"))
    fp = embedding_fingerprint(engine.model("sim").config, 8)
    bad = embedding_key(fp, texts[-1])
    assert rep.requests == 1 and rep.embedded == 5 and list(rep.errors) == [bad]
    assert rep.errors[bad].startswith("invalid_output:")
    assert q(pg_conn, f'select count(*) from "{audit}".llm_embeddings')[0][0] == 5
    assert q(pg_conn, f'select key, error_kind from "{audit}".llm_errors') == [(bad, "invalid_output")]
    n, tokens, _ = calls(pg_conn, audit)
    assert n == 1 and tokens == sim.stats()["prompt_tokens"] > 0
