"""Hierarchical aggregate: one LLM answer per group over all its texts (issue 20 point 2, decision 0037).

A group's rows, in a deterministic order, are cut into leaf chunks that fit ``max_input_tokens``;
each chunk is one ``complete`` (or ``extract``) prompt: the instructions plus the chunk's texts.
Their answers (partials) are grouped into parents whose prompt is the instructions plus the
partials, level after level, until one node is left: the group's answer. Nothing here requests or
reads anything: ``walk_groups`` is handed a ``lookup`` (prompt -> cached answer) and, on a real run,
a ``fill`` (the one fill, ``pg/fill.py``), so claims, journal, spend cap, audit and dead letters are
the fill's. Every node's cache key is the usual ``sha256(fingerprint, prompt)``: a node is paid
again only when its prompt (its texts, or its children's answers) changes.

Boundaries are content-defined, not positional: a row starts a new chunk when the hash of its own
key is 0 mod ``chunk_rows`` (or the chunk would exceed the token budget); at level L a child starts
a new parent when the hash of (its first row's key, L) is 0 mod ``fan_in`` (or the parent would
exceed the budget), and a parent always takes at least two children, so each level shrinks.
Inserting a row therefore changes its own chunk and the path to the root, not every chunk after it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..errors import ConfigError
from ..models.keys import cache_key
from .arguments import missing_text_problems, whole_number_problem
from .levels import LevelRequests

__all__ = ["SYSTEM_PHRASE", "LEAF_HEADER", "REDUCE_HEADER", "Node", "AggregateResult", "row_key",
           "leaf_prompt", "reduce_prompt", "leaf_chunks", "parent_groups", "walk_groups",
           "check_aggregate_arguments", "DEFAULT_MAX_INPUT_TOKENS", "DEFAULT_FAN_IN", "read_groups",
           "cached_answers", "prompts_source_sql", "run_aggregate", "answer_sql", "default_chunk_rows"]

# The fixed system phrase of every aggregate step (part of the fingerprint; the simulator reads it).
SYSTEM_PHRASE = ("You combine many texts into one answer. Follow the instructions and use only the texts "
                 "given; when they are partial answers over parts of the texts, merge them into one.")
LEAF_HEADER = "Items"  # "Items (N):" then one "- text" line per row
REDUCE_HEADER = "Partial answers"  # "Partial answers (N):" then one "- answer" line per child
DEFAULT_MAX_INPUT_TOKENS = 4000
DEFAULT_FAN_IN = 4
_SPACES = re.compile(r"\s+")


def row_key(order_value: str | None, text: str) -> str:
    """A row's identity for boundaries and order: the hash of its order value and its text."""
    return hashlib.sha256(f"{order_value or ''}\x1f{text}".encode("utf-8", "surrogatepass")).hexdigest()


def _one_line(text: str) -> str:
    # one item per line: the prompt's structure must not depend on the texts' own line breaks
    return _SPACES.sub(" ", text).strip()


def leaf_prompt(instructions: str, texts: Sequence[str]) -> str:
    lines = "\n".join("- " + _one_line(t) for t in texts)
    return f"{instructions}\n\n{LEAF_HEADER} ({len(texts)}):\n{lines}"


def reduce_prompt(instructions: str, partials: Sequence[str]) -> str:
    lines = "\n".join("- " + _one_line(p) for p in partials)
    return f"{instructions}\n\n{REDUCE_HEADER} ({len(partials)}):\n{lines}"


def _hash_int(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def leaf_chunks(keys: Sequence[str], tokens: Sequence[int], budget: int, chunk_rows: int) -> list[list[int]]:
    """Indices of each leaf chunk: a row starts a new chunk when its key hashes to 0 mod
    ``chunk_rows``. A chunk that would pass ``budget`` tokens is cut at its last backup boundary (a
    row hashing to 0 mod ``chunk_rows // 2``; content-defined too, as in TTTD chunking), else
    before the row that does not fit, so a cut moves with the content, not with positions."""
    backup_mod = max(1, chunk_rows // 2)
    chunks: list[list[int]] = []
    used = 0
    backup = -1  # position in chunks[-1] of its last backup boundary (never its first row)
    for i, key in enumerate(keys):
        h = _hash_int(key)
        if not chunks or h % chunk_rows == 0:
            chunks.append([])
            used, backup = 0, -1
        elif used + tokens[i] > budget:
            if backup > 0:  # move the rows from the backup boundary on into a new chunk
                moved = chunks[-1][backup:]
                del chunks[-1][backup:]
                chunks.append(moved)
                used, backup = sum(tokens[j] for j in moved), -1
            if used + tokens[i] > budget and chunks[-1]:
                chunks.append([])
                used, backup = 0, -1
        if chunks[-1] and h % backup_mod == 0:
            backup = len(chunks[-1])
        chunks[-1].append(i)
        used += tokens[i]
    return chunks


def parent_groups(firsts: Sequence[str], tokens: Sequence[int], level: int, budget: int,
                  fan_in: int) -> list[list[int]]:
    """Indices of each parent's children at ``level`` (>= 1): a child starts a new parent when
    (its first row key, level) hashes to 0 mod ``fan_in`` or the budget would be passed, but only
    once the current parent has two children; a lone last child joins the parent before it."""
    parents: list[list[int]] = []
    used = 0
    for i, first in enumerate(firsts):
        cut = _hash_int(first, str(level)) % fan_in == 0 or used + tokens[i] > budget
        if not parents or (len(parents[-1]) >= 2 and cut):
            parents.append([])
            used = 0
        parents[-1].append(i)
        used += tokens[i]
    if len(parents) > 1 and len(parents[-1]) == 1:
        parents[-2].extend(parents.pop())
    return parents


@dataclass(frozen=True)
class Node:
    first: str  # the row key of the node's first row (its identity at every level)
    prompt: str
    rows: int  # input rows under the node


@dataclass
class AggregateResult(LevelRequests):
    """The walk's outcome: each group's root prompt (None: some step has no answer), and counts
    (``LevelRequests``: missing prompts per level, the estimate's bound above them)."""

    roots: dict[str, str | None] = field(default_factory=dict)
    answers: dict[str, str | None] = field(default_factory=dict)
    nodes_by_level: list[int] = field(default_factory=list)  # distinct prompts per level (the tree's size)
    depth: dict[str, int] = field(default_factory=dict)  # levels of each group's tree walked


def check_aggregate_arguments(args: Mapping) -> None:
    """Every problem with ``pg_llm.llm_aggregate``'s arguments, each naming the argument and the fix."""
    problems: list[str] = []
    problems += missing_text_problems(args, (("group_by", "'product_id'"), ("text_sql", "'review_text'"),
                                             ("instructions", "'Summarise the main complaints'")))
    for name, low, example in (("max_input_tokens", 64, 4000), ("chunk_rows", 1, 16), ("fan_in", 2, 4)):
        if args.get(name) is not None:
            problems += whole_number_problem(name, args.get(name), low, example)
    schema = args.get("schema")
    if schema is not None and not isinstance(schema, Mapping):
        problems.append("schema: must be a JSON schema mapping, e.g. schema={'type': 'object'}")
    if problems:
        raise ConfigError(problems, context="pg_llm.llm_aggregate")


def walk_groups(groups: Mapping[str, Sequence[tuple[str, str]]], instructions: str, *, budget: int,
                chunk_rows: int, fan_in: int, count: Callable[[str], int],
                lookup: Callable[[list[str]], dict[str, str]],
                fill: Callable[[list[str]], None] | None = None,
                price: Callable[[list[str]], None] | None = None) -> AggregateResult:
    """Walk every group's tree level by level. ``groups``: group -> rows ``(row key, text)`` already
    in their order. ``lookup(prompts)``: the cached answers of those prompts (absent: none).
    ``fill(prompts)``: request the missing ones (a real run); without it the walk only counts what
    is missing (leaves exactly, the levels above as an upper bound: a level of n nodes has at most
    n - 1 nodes above it, each parent taking two children or more). ``price(prompts)``: called,
    without ``fill``, with each level's missing prompts (the estimate prices them)."""
    result = AggregateResult()
    overhead = count(leaf_prompt(instructions, []))
    room = max(1, budget - overhead)
    level_nodes: dict[str, list[Node]] = {}
    for group, rows in groups.items():
        keys = [k for k, _ in rows]
        tokens = [count(t) + 1 for _, t in rows]
        chunks = leaf_chunks(keys, tokens, room, chunk_rows)
        level_nodes[group] = [Node(keys[c[0]], leaf_prompt(instructions, [rows[i][1] for i in c]), len(c))
                              for c in chunks]
    level = 0
    while level_nodes:
        prompts = sorted({n.prompt for nodes in level_nodes.values() for n in nodes})
        answers = lookup(prompts) if prompts else {}
        missing = [p for p in prompts if answers.get(p) is None]
        result.nodes_by_level.append(len(prompts))
        result.missing_by_level.append(len(missing))
        if missing and fill is None and price is not None:
            price(missing)
        if missing and fill is not None:
            fill(missing)
            answers.update(lookup(missing))
        following: dict[str, list[Node]] = {}
        for group, nodes in level_nodes.items():
            result.depth[group] = level + 1
            if any(answers.get(n.prompt) is None for n in nodes):
                result.roots[group] = result.answers[group] = None
                if fill is None and len(nodes) > 1:
                    result.upper_bound += len(nodes) - 1
                continue
            if len(nodes) == 1:
                result.roots[group] = nodes[0].prompt
                result.answers[group] = answers[nodes[0].prompt]
                continue
            partials = [answers[n.prompt] for n in nodes]
            parents = parent_groups([n.first for n in nodes], [count(p) + 1 for p in partials], level + 1,
                                    room, fan_in)
            following[group] = [Node(nodes[c[0]].first, reduce_prompt(instructions, [partials[i] for i in c]),
                                     sum(nodes[i].rows for i in c)) for c in parents]
        level_nodes = following
        level += 1
    return result


# -- on Postgres (a DB-API connection handed in; SQL embeds the model's own SQL, like a fill) -------
def read_groups(conn, relation_sql: str, group_sql: str, text_sql: str,
                order_sql: str | None = None) -> dict[str | None, list[tuple[str, str]]]:
    """Every group's non-NULL texts as ``(row key, text)``, in the tree's order: by ``order_sql``
    (then the text) when given, else by the row key, so the order never depends on how the
    relation's rows happen to be stored."""
    order = f"({order_sql})" if order_sql else "null"
    with conn.cursor() as cur:
        cur.execute(f"select g, o::text, t from (select ({group_sql})::text as g, {order} as o, ({text_sql})::text as t "
                    f"from {relation_sql} as pg_llm_src) s where t is not null order by g, o, t")
        groups: dict[str | None, list[tuple[str, str]]] = {}
        for g, o, t in cur.fetchall():
            groups.setdefault(g, []).append((row_key(o, t), t))
    if not order_sql:  # by the row key: the stored order of the relation's rows never matters
        for rows in groups.values():
            rows.sort()
    return groups


def cached_answers(conn, audit_schema: str, fingerprint: str, prompts: Sequence[str], json_output: bool) -> dict:
    """prompt -> its usable cached answer (valid, unexpired) in ``llm_results``; text of the JSON for extract."""
    from ..pg.join import fresh_sql
    from ..pg.migrations import quote_ident

    by_key = {cache_key(fingerprint, p): p for p in prompts}
    value = "r.output_json::text" if json_output else "r.output_text"
    with conn.cursor() as cur:
        cur.execute(f"select r.key, {value} from {quote_ident(audit_schema)}.llm_results r "
                    f"where r.key = any(%s) and {fresh_sql('r')}", (list(by_key),))
        return {by_key[k]: v for k, v in cur.fetchall() if v is not None}


def prompts_source_sql(prompts: Sequence[str]) -> str:
    """A relation of one column ``pg_llm_prompt`` holding ``prompts`` (what one level's fill reads)."""
    from ..pg.join import quote_literal

    values = ", ".join(f"({quote_literal(p)})" for p in prompts)
    return f"(select * from (values {values}) as pg_llm_v(pg_llm_prompt))"


def run_aggregate(connect: Callable[[], object], relation_sql: str, group_sql: str, text_sql: str,
                  instructions: str, *, fingerprint: str, audit_schema: str, json_output: bool = False,
                  order_sql: str | None = None, budget: int = DEFAULT_MAX_INPUT_TOKENS, chunk_rows: int | None = None,
                  fan_in: int = DEFAULT_FAN_IN, count: Callable[[str], int] = lambda t: (len(t) + 3) // 4,
                  fill: Callable[[str], object] | None = None,
                  price: Callable[[str], object] | None = None) -> tuple[AggregateResult, dict]:
    """Read the groups, walk their trees (``fill(source_sql)`` requests one level's missing prompts:
    the column spec's ``prompt_sql`` is ``pg_llm_prompt``; ``price(source_sql)`` likewise prices them
    in an estimate) and return the result and each group's root key (None: no answer)."""
    from ..pg.migrations import ensure_migrated

    conn = connect()
    try:
        conn.autocommit = True  # no transaction held open across the levels' fills
        ensure_migrated(conn, audit_schema)  # the lookups read llm_results before any fill made it
        groups = read_groups(conn, relation_sql, group_sql, text_sql, order_sql)
        result = walk_groups(
            groups, instructions, budget=budget, chunk_rows=chunk_rows or default_chunk_rows(budget),
            fan_in=fan_in, count=count,
            lookup=lambda prompts: cached_answers(conn, audit_schema, fingerprint, prompts, json_output),
            fill=None if fill is None else (lambda prompts: fill(prompts_source_sql(prompts))),
            price=None if price is None else (lambda prompts: price(prompts_source_sql(prompts))))
    finally:
        conn.close()
    keys = {g: (None if p is None else cache_key(fingerprint, p)) for g, p in result.roots.items()}
    return result, keys


def default_chunk_rows(budget: int) -> int:
    """Rows per chunk expected from the content-defined boundaries: a quarter of the budget at ~64
    tokens a row (chunk lengths are geometric: about 2% reach four times the mean), so the token cap
    rarely cuts (a cut may move the chunks after it up to the next content-defined boundary)."""
    return max(2, budget // 256)


def answer_sql(relation_sql: str, group_sql: str, group_name: str, keys: Mapping, audit_schema: str,
               output_column: str, answer_name: str) -> str:
    """One row per group of ``relation_sql``: ``group_name`` and the answer (NULL without one)."""
    from ..pg.join import fresh_sql, quote_literal
    from ..pg.migrations import quote_ident

    pairs = ", ".join(f"({quote_literal(g)}, {quote_literal(k)})" for g, k in keys.items() if k is not None)
    roots = (f"(values {pairs}) as pg_llm_v(g, k)" if pairs
             else "(select null::text as g, null::text as k where false) as pg_llm_v")
    return (f"select pg_llm_g.{quote_ident(group_name)}, pg_llm_r.{output_column} as {quote_ident(answer_name)}\n"
            f"from (select distinct ({group_sql}) as {quote_ident(group_name)} from {relation_sql} as pg_llm_src) pg_llm_g\n"
            f"left join {roots} on pg_llm_v.g is not distinct from pg_llm_g.{quote_ident(group_name)}::text\n"
            f"left join {quote_ident(audit_schema)}.llm_results pg_llm_r on pg_llm_r.key = pg_llm_v.k "
            f"and {fresh_sql('pg_llm_r')}")
