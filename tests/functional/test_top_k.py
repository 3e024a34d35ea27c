"""pg_llm.top_k's tournament (issue 20.3, decision 0038) on real Postgres and the simulator over HTTP:
the simulator's rule's top-k per partition, k larger than a partition, stable across row order, warm
rerun 0, a new row re-paying only the windows it changes, failing / invalid windows -> no rows for
that partition + dead letters, and the embedding first pass cutting requests."""
from __future__ import annotations

import pytest

from dbt_pg_llm import BufferedSink, LlmSettings, build_engine
from dbt_pg_llm.operators.top_k import RANK_PHRASE, RANKING_SCHEMA, requests_for, run_top_k, top_k_sql
from dbt_pg_llm.pg import ColumnSpec, RunContext, fill_column
from dbt_pg_llm.simulator import SimulatorConfig
from dbt_pg_llm.simulator.rank_answers import overlap

pytestmark = pytest.mark.functional
QUERY = "the leather strap broke near the buckle"
K, WINDOW = 4, 8
WORDS = ["leather", "strap", "broke", "buckle", "near", "box", "late", "blue", "the"]


def q(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def rows_of(sizes):
    """(id, product, body): bodies share 0..5 words with the query, many ties (broken by id)."""
    out, rid = [], 0
    for g, n in sizes.items():
        for i in range(n):
            rid += 1
            words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range((i * 5) % 6)]
            out.append((rid, g, f"{g} note {i}: " + " ".join(words)))
    return out


def make_table(pg_conn, schema, name, rows, emb=False):
    q(pg_conn, f'create table "{schema}".{name} (id int, product text, body text, emb real[])')
    with pg_conn.cursor() as cur:
        cur.executemany(f'insert into "{schema}".{name} (id, product, body) values (%s, %s, %s)', rows)
    return f'"{schema}".{name}'


def expected(rows, k=K):
    by = {}
    for rid, g, body in sorted(rows):
        by.setdefault(g, []).append((rid, body))
    return {g: [str(r) for r, _ in sorted(v, key=lambda rb: (-overlap(QUERY, rb[1]), rb[0]))[:k]]
            for g, v in by.items()}


class Setup:
    def __init__(self, connect, audit, sim):
        self.connect, self.audit, self.sim = connect, audit, sim
        self.settings = LlmSettings.from_dict({"default_model": "sim", "models": {"sim": {
            "api_url": sim.base_url, "model_version": "sim-small", "retry": {"max_retries": 0}}}})
        self.spec = ColumnSpec.from_dict({"name": "rank", "kind": "extract", "prompt_sql": "pg_llm_prompt",
                                          "schema": RANKING_SCHEMA, "instructions": RANK_PHRASE}, "sim")
        self.fp = self.spec.fingerprint(self.settings.config_for("sim"))
        self.runs = 0

    def run(self, src, on_error="null", k=K, **kw):
        self.runs += 1
        engine = build_engine(self.settings, journal=False, sinks=[BufferedSink()])
        run = RunContext(f"run-{self.runs}", "model.p.topk")
        try:
            return run_top_k(
                self.connect, src, "product", "id", "body", QUERY, k, fingerprint=self.fp, audit_schema=self.audit,
                model="sim", window=WINDOW, node_id="model.p.topk", on_error=on_error,
                fill=lambda s: fill_column(self.connect, engine, s, self.spec, audit_schema=self.audit, run=run,
                                           on_error=on_error, claim_timeout_s=5), **kw)
        finally:
            engine.close()


def test_top_k_is_the_rules_top_k_stable_and_incremental(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig())
    s = Setup(connect, audit, sim)
    sizes = {"alpha": 46, "beta": 3, "gamma": 1, "delta": 8}
    rows = rows_of(sizes)
    src = make_table(pg_conn, schema, "notes", rows)
    result = s.run(src)
    assert result.ranked == expected(rows)  # beta (3 < k) and gamma (1) get all their rows, ranked
    first = sim.stats()["requests"]
    cold = sum(requests_for(n, WINDOW, K) for n in sizes.values())
    print(f"\n[top_k] n={sizes}, w={WINDOW}, k={K}: {first} requests (formula {cold}); windows per level "
          f"{result.windows_by_level}")
    assert first == result.requested == cold == 11 + 1 + 0 + 1
    # the model's SELECT: every column plus rank, k rows per partition
    got = q(pg_conn, f"select product, id, rank from ({top_k_sql(src, 'pg_llm_src.product', 'pg_llm_src.id', result.ranked, 'rank')}) t "
                     "order by product, rank")
    assert [(g, str(i)) for g, i, _ in got] == [(g, i) for g in sorted(sizes) for i in expected(rows)[g]]
    # warm rerun with the rows stored in reverse order: same ranking, nothing requested
    reversed_src = make_table(pg_conn, schema, "notes_reversed", list(reversed(rows)))
    again = s.run(reversed_src)
    assert again.ranked == result.ranked and again.requested == 0 and sim.stats()["requests"] == first
    # a new best row in alpha (highest id): its window and the path to the final one, nothing else
    q(pg_conn, f"insert into {src} (id, product, body) values (1000, 'alpha', %s)", ("alpha: " + QUERY,))
    third = s.run(src)
    repaid = sim.stats()["requests"] - first
    print(f"[top_k] +1 row in alpha: re-paid {repaid} of {first} (levels {len(third.windows_by_level)})")
    assert third.ranked["alpha"][0] == "1000" and third.ranked == expected(rows + [(1000, "alpha", "alpha: " + QUERY)])
    # levels of 47 -> 24 -> 12 -> 8 candidates: its leaf window, the last window of level 1, (level 2's
    # last window holds 4 <= k rows: passed up unasked) and the final window
    assert repaid == third.requested == 3 and len(third.windows_by_level) == 4


def test_failed_and_invalid_windows_leave_their_partition_empty(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig())
    s = Setup(connect, audit, sim)
    rows = rows_of({"alpha": 20, "beta": 5, "gamma": 5})
    rows = [(r, g, b + (" [[rank:invalid]]" if g == "beta" and r == rows[21][0] else "")
             + (" [[fault:400]]" if g == "gamma" and r == rows[26][0] else "")) for r, g, b in rows]
    src = make_table(pg_conn, schema, "notes", rows)
    result = s.run(src)
    assert result.ranked["beta"] is None and result.ranked["gamma"] is None
    assert result.ranked["alpha"] == expected(rows)["alpha"]
    dead = q(pg_conn, f'select error_kind from "{audit}".llm_errors where resolved_at is null order by 1')
    assert dead == [("invalid_input",), ("invalid_output",)]  # gamma's 400, beta's invalid answer
    # the invalid answer is not served again: the next run asks for it again (and rejects it again)
    before = sim.stats()["requests"]
    assert s.run(src).ranked["beta"] is None and sim.stats()["requests"] - before == 2
    sql = top_k_sql(src, "pg_llm_src.product", "pg_llm_src.id", result.ranked, "rank")
    assert {g for (g,) in q(pg_conn, f"select distinct product from ({sql}) t")} == {"alpha"}
    with pytest.raises(Exception, match="invalid|400|fail"):
        s.run(src, on_error="fail")


def test_embedding_first_pass_cuts_requests(db, pg_conn, simulator_factory):
    connect, schema, audit = db
    sim = simulator_factory(SimulatorConfig())
    s = Setup(connect, audit, sim)
    rows = rows_of({"alpha": 60, "beta": 30})
    src = make_table(pg_conn, schema, "notes", rows)
    # a 2-d "embedding" whose cosine to the query's (1, 0) follows the query-word overlap
    q(pg_conn, f"update {src} set emb = array[1 + 10 * (select count(*) from unnest(%s::text[]) w "
               f"where body ~ ('\\m' || w || '\\M')), mod(id, 7)]::real[]", (QUERY.split(),))
    distance = ("(1 - (select sum(x::float8 * y) / (sqrt(sum(x::float8 * x)) * sqrt(sum(y::float8 * y))) "
                "from unnest(pg_llm_src.emb, array[1, 0]::real[]) as t(x, y)))")
    result = s.run(src, distance_sql=distance, candidates=3 * K)
    with_first_pass = sim.stats()["requests"]
    full = requests_for(60, WINDOW, K) + requests_for(30, WINDOW, K)
    print(f"\n[top_k] embedding first pass (m={3 * K}): {with_first_pass} requests vs {full} without")
    assert with_first_pass == 2 * requests_for(3 * K, WINDOW, K) < full
    assert all(len(v) == K for v in result.ranked.values())
