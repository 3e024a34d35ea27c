"""Embedding columns of a relation (what ``pg_llm.embed`` inside ``llm_enrich`` asks for).

    from dbt_pg_llm.operators.embed_columns import embed_relation, embed_join_sql, vector_type, column_dims

    report = embed_relation(connect, engine, "embedder", "my_schema.docs", "title || ' ' || body",
                            dimensions=256, audit_schema="llm_audit", run=run)  # embed.embed_texts underneath
    sql = embed_join_sql("select * from my_schema.docs", [("emb", fp, "title || ' ' || body", 256)],
                         "llm_audit", vector=vector_type(conn))  # vector(256), or real[] without pgvector

The missing texts are found by Postgres (an anti-join on ``llm_embeddings``): a warm rerun reads no
text and sends nothing.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..models.config import ModelConfig
from ..models.keys import key_sql
from ..models.model_io import TokenUsage
from ..models.pricing import cost_usd
from ..models.tokens import token_counter
from ..pg.estimate import ColumnEstimate
from ..pg.migrations import ensure_migrated, quote_ident
from .embed import (EMBEDDINGS_TABLE, MAX_INPUT_TOKENS, MAX_INPUTS, MAX_REQUEST_TOKENS, EmbedReport, embed_texts,
                    embedding_config, embedding_fingerprint)

__all__ = ["NATIVE_DIMS", "column_dims", "missing_texts_sql", "embed_relation", "vector_type", "embed_join_sql",
           "lookup_is_cheaper", "EmbedEstimate", "estimate_embed_column"]

NATIVE_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


def column_dims(config: ModelConfig, dimensions: int | None) -> int | None:
    """The vector length a column will hold: ``dimensions``, or the model's known native length
    (None for a model we do not know: the column is then an untyped ``vector``)."""
    return int(dimensions) if dimensions else NATIVE_DIMS.get(config.model_version or "")


def missing_texts_sql(source_sql: str, text_sql: str, fingerprint: str, audit_schema: str = "llm_audit") -> str:
    """(text, key) of the distinct non-NULL texts of ``source_sql`` whose key has no vector yet (the
    texts are computed in a subquery that sees only the source, so ``text_sql`` may use any source
    column unqualified). The key is computed once per text, by Postgres (``offset 0`` keeps the
    planner from copying its expression into the anti-join): the caller need not hash 100,000 texts."""
    return (f"select s.__emb_t, s.__emb_k from (select d.__emb_t, {key_sql(fingerprint, 'd.__emb_t')} as __emb_k\n"
            f"  from (select distinct ({text_sql})::text as __emb_t from {source_sql} __emb_src) d\n"
            f"  where d.__emb_t is not null offset 0) s\n"
            f"where not exists (select 1 from {quote_ident(audit_schema)}.{EMBEDDINGS_TABLE} e where e.key = s.__emb_k)")


def embed_relation(connect: Callable[[], Any], engine, model_name: str, source_sql: str, text_sql: str, *,
                   dimensions: int | None = None, audit_schema: str = "llm_audit", **kwargs) -> EmbedReport:
    """``embed_texts`` for the distinct texts ``text_sql`` gives over ``source_sql`` that have no vector
    yet (read by Postgres with an anti-join: a warm rerun reads no text and sends nothing)."""
    config = embedding_config(engine, model_name)
    fp = embedding_fingerprint(config, dimensions)
    conn = connect()
    try:
        conn.autocommit = True
        ensure_migrated(conn, audit_schema)
        with conn.cursor() as cur:
            cur.execute(missing_texts_sql(source_sql, text_sql, fp, audit_schema))
            missing = dict((k, t) for t, k in cur.fetchall())
    finally:
        conn.close()
    return embed_texts(connect, engine, model_name, missing, dimensions=dimensions, audit_schema=audit_schema,
                       known_missing=True, **kwargs)


def vector_type(conn) -> str | None:
    """The qualified ``vector`` type when the pgvector extension is installed in this database, else None."""
    with conn.cursor() as cur:
        cur.execute("select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
                    "where e.extname = 'vector'")
        row = cur.fetchone()
    return f"{quote_ident(row[0])}.vector" if row else None


def embed_join_sql(inner_sql: str, columns: list[tuple[str, str, str, int | None]], audit_schema: str = "llm_audit",
                   vector: str | None = None, lookup: bool = False) -> str:
    """SELECT of ``inner_sql``'s rows plus one vector column per ``(name, fingerprint, text_sql, dims)``:
    ``vector(dims)`` when ``vector`` (the qualified type from ``vector_type``) is given, else ``real[]``;
    NULL for a NULL text or a text that failed. Keys come from a LATERAL subquery that sees only the
    rows, so ``text_sql`` may use their columns unqualified (even ones named key, model, vec ...).
    ``lookup``: each row's vector fetched through the cache's primary key (a scalar subquery) instead
    of a left join, which Postgres runs as a hash of the whole cache (``lookup_is_cheaper`` chooses)."""
    q = quote_ident(audit_schema)
    keys = ", ".join(f"{key_sql(fp, text)} as __emb_k{i}" for i, (_, fp, text, _) in enumerate(columns))
    select, joins = ["__emb_src.*"], []
    for i, (name, _, _, dims) in enumerate(columns):
        vec = (f"(select __emb_e{i}.vec from {q}.{EMBEDDINGS_TABLE} __emb_e{i} where __emb_e{i}.key = __emb_k.__emb_k{i})"
               if lookup else f"__emb_e{i}.vec")
        # vec is vector or real[] (migration 20): cast to what the column is, whichever it is stored as
        value = f"{vec}::{vector}" + (f"({int(dims)})" if dims else "") if vector else f"{vec}::real[]"
        select.append(f"{value} as {quote_ident(name)}")
        if not lookup:
            joins.append(f"left join {q}.{EMBEDDINGS_TABLE} __emb_e{i} on __emb_e{i}.key = __emb_k.__emb_k{i}")
    return (f"select {', '.join(select)}\nfrom ({inner_sql}\n) __emb_src\ncross join lateral (select {keys}) __emb_k"
            + "".join(f"\n{j}" for j in joins))


def lookup_is_cheaper(conn, inner_sql: str, columns: list[tuple[str, str, str, int | None]],
                      audit_schema: str = "llm_audit") -> bool:
    """Whether ``embed_join_sql`` should fetch vectors by key lookup. Postgres has no statistics on the
    computed key, so for the join it hashes the whole cache: time grows with every vector ever stored
    (a 100,000-row model over a 300,000-vector cache: 2.3-2.7 s, by lookup 1.3-1.6 s), while at a cache
    about the model's size the hash is faster (1.0-1.2 s vs 1.45 s). So: lookups when the cache holds
    more than twice the model's rows (both as Postgres estimates them: no scan). ``conn``: autocommit.
    False when it cannot tell (e.g. ``dbt compile`` before the model's inputs exist)."""
    try:
        return _cache_outgrows_model(conn, inner_sql, columns, audit_schema)
    except Exception:  # the join is then the one written: correct either way, only its speed differs
        return False


def _cache_outgrows_model(conn, inner_sql: str, columns: list[tuple[str, str, str, int | None]],
                          audit_schema: str) -> bool:
    import json

    dims = max([int(d) for _, _, _, d in columns if d] or [1536])
    with conn.cursor() as cur:
        # rows as the planner scales them: the last analyze's rows per page times today's pages; never
        # analyzed (reltuples -1): today's size over a row's (the vector and ~80 bytes)
        cur.execute("select c.reltuples, c.relpages, pg_relation_size(c.oid) from pg_class c "
                    "where c.oid = to_regclass(%s)", (f"{quote_ident(audit_schema)}.{EMBEDDINGS_TABLE}",))
        row = cur.fetchone()
        if row is None:
            return False
        tuples, pages, size = row
        cache_rows = tuples / pages * (size / 8192) if tuples >= 0 and pages > 0 else size / (4 * dims + 80)
        cur.execute(f"explain (format json) select 1 from ({inner_sql}\n) __emb_src")
        plan = cur.fetchone()[0]
    model_rows = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"]
    return cache_rows > 2 * max(1.0, float(model_rows))


@dataclass
class EmbedEstimate(ColumnEstimate):
    """A ``ColumnEstimate`` of an embed column, with the requests its missing texts take."""

    requests: int = 0

    def line(self) -> str:
        cost = f"${self.cost_usd:.8f}" if self.cost_usd is not None else "cost unknown (no price configured)"
        return (f"{self.node_id or 'model'}.{self.column}: {self.model} (embeddings): {self.uncached_keys} of "
                f"{self.distinct_keys} distinct texts not embedded"
                + (f" ({self.journal_keys} more in the local journal, free)" if self.journal_keys else "")
                + f", {self.requests} request(s), ~{self.prompt_tokens} input tokens at most, {cost}")


def estimate_embed_column(conn, engine, model_name: str, source_sql: str, text_sql: str, *,
                          dimensions: int | None = None, audit_schema: str = "llm_audit", node_id: str | None = None,
                          column: str | None = None, max_inputs: int = MAX_INPUTS,
                          max_request_tokens: int = MAX_REQUEST_TOKENS,
                          max_input_tokens: int = MAX_INPUT_TOKENS) -> EmbedEstimate:
    """What ``embed_relation`` would request for ``text_sql`` over ``source_sql``, requesting nothing:
    the distinct texts with no vector (the journal's are free), grouped into requests as the fill
    groups them (at most ``max_inputs`` inputs and ``max_request_tokens`` tokens), each text's
    tokens bounded by the model's tokenizer (``tokens.token_counter``; a text over
    ``max_input_tokens`` counts as truncated), priced at the input price: an upper bound of one
    answered attempt per request (retries after errors are not counted, as for chat: decision 0027).
    ``conn``: psycopg2, no transaction open (a read-only one is used and rolled back)."""
    config = embedding_config(engine, model_name)
    fp = embedding_fingerprint(config, dimensions)
    est = EmbedEstimate(node_id=node_id, column=column, model=model_name)
    count = token_counter(config).count
    cache = getattr(engine, "cache", None)
    requests, inputs, tokens_in_request, tokens = 0, 0, 0, 0
    was_autocommit = conn.autocommit
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("set transaction read only")
            cur.execute(f"select count(distinct ({text_sql})::text) from {source_sql} __emb_src")
            est.distinct_keys = int(cur.fetchone()[0])
        with conn.cursor(name=f"llm_embed_estimate_{uuid.uuid4().hex}") as cur:
            cur.itersize = 2000
            cur.execute(missing_texts_sql(source_sql, text_sql, fp, audit_schema))
            for text, key in cur:
                if not text.strip():
                    continue  # fails locally, never sent
                if cache is not None and cache.get(key) is not None:
                    est.journal_keys += 1
                    continue
                t = min(count(text), max_input_tokens)
                if inputs == 0 or inputs >= max_inputs or tokens_in_request + t > max_request_tokens:
                    requests, inputs, tokens_in_request = requests + 1, 0, 0
                inputs += 1
                tokens_in_request += t
                tokens += t
                est.uncached_keys += 1
    finally:
        conn.rollback()
        conn.autocommit = was_autocommit
    est.requests, est.prompt_tokens = requests, tokens
    priced = getattr(config, "cost_per_1k_input_tokens", None) is not None
    est.cost_usd = round(cost_usd(config, TokenUsage(tokens, 0)), 8) if priced else None
    return est
