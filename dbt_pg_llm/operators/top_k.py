"""Top-k per partition by an LLM tournament (issue 20 point 3, decision 0038).

A partition's candidates, in the id order, are cut into windows of ``window`` rows (positional).
Each window with more than ``k`` rows is one ``extract`` prompt: the query, the window's texts
numbered ``[1]..[s]`` and "pick the m best, best first"; its answer ``{"ranking": [numbers]}`` must
name exactly ``min(k, s)`` distinct numbers of that window (checked here, strictly: anything else
is an invalid answer, a dead letter, and the partition gets no rows this run). Windows with ``k``
rows or fewer pass all their rows up unasked. The winners, back in id order, form the next level;
once a level has ``window`` rows or fewer, one final window orders the best ``min(k, n)``: ranks
1..k. Requests for n candidates: ``sum over levels of windows with more than k rows`` + the final
one, about ``n / (window - k) + 1`` (``requests_for``).

Nothing here requests anything: ``walk_partitions`` is handed a ``lookup`` (prompt -> cached JSON
answer) and on a real run a ``fill`` (``pg/fill.py``, through the adapter's ``llm_fill``), so
claims, journal, spend cap, llm_calls / llm_runs and dead letters of failed requests are the fill's.
Each window's cache key is the usual ``sha256(fingerprint, prompt)``: a rerun pays nothing and a
new row re-pays only the windows whose texts (or, above, whose winners) changed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ..errors import ConfigError, ErrorKind
from ..models.keys import cache_key
from .arguments import missing_text_problems, whole_number_problem
from .levels import LevelRequests

__all__ = ["RANK_PHRASE", "CANDIDATES_HEADER", "RANKING_SCHEMA", "DEFAULT_WINDOW", "InvalidRanking", "TopKResult", "rank_prompt",
           "parse_ranking", "windows_of", "requests_for", "walk_partitions", "check_top_k_arguments",
           "read_partitions", "run_top_k", "top_k_sql"]

# The fixed instructions of every window (part of the fingerprint; the simulator recognises them).
RANK_PHRASE = ("You rank candidate texts by how well each answers a query. Reply with the numbers of the "
               "best candidates, best first, as {\"ranking\": [numbers]}, using only the numbers shown.")
CANDIDATES_HEADER = "Candidates"  # "Candidates (s):" then one "[i] text" line per row
# Generic on purpose (one spec, one fingerprint for every window); the window's own bounds are
# checked by parse_ranking.
RANKING_SCHEMA = {"type": "object", "required": ["ranking"], "additionalProperties": False,
                  "properties": {"ranking": {"type": "array", "minItems": 1, "uniqueItems": True,
                                             "items": {"type": "integer", "minimum": 1}}}}
DEFAULT_WINDOW = 20
_SPACES = re.compile(r"\s+")


class InvalidRanking(ValueError):
    """A window's answer is not ``m`` distinct numbers of the window."""


def rank_prompt(query: str, texts: Sequence[str], m: int) -> str:
    # one candidate per line: the prompt's structure must not depend on the texts' own line breaks
    lines = "\n".join(f"[{i}] {_SPACES.sub(' ', t).strip()}" for i, t in enumerate(texts, 1))
    return (f"Query: {_SPACES.sub(' ', query).strip()}\n\nPick the {m} best candidates for the query, best first.\n"
            f"{CANDIDATES_HEADER} ({len(texts)}):\n{lines}")


def parse_ranking(answer: str | None, size: int, m: int) -> list[int]:
    """0-based positions of a window's answer; InvalidRanking unless exactly ``m`` distinct numbers
    in 1..``size`` (a JSON object ``{"ranking": [...]}``)."""
    try:
        value = json.loads(answer) if isinstance(answer, str) else answer
        ranking = value["ranking"]
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRanking(f"answer is not {{\"ranking\": [...]}}: {str(answer)[:80]!r}") from exc
    if (not isinstance(ranking, list) or len(ranking) != m or len(set(map(repr, ranking))) != m
            or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= size for i in ranking)):
        raise InvalidRanking(f"ranking {str(ranking)[:80]} is not {m} distinct candidate numbers from 1..{size}")
    return [i - 1 for i in ranking]


def windows_of(n: int, window: int) -> list[range]:
    """Positional windows of ``window`` rows over ``n`` candidates in id order."""
    return [range(i, min(n, i + window)) for i in range(0, n, window)]


def requests_for(n: int, window: int, k: int) -> int:
    """Requests a partition of ``n`` candidates costs cold (answers do not change level sizes)."""
    total = 0
    while n > window:
        sizes = [len(w) for w in windows_of(n, window)]
        total += sum(1 for s in sizes if s > k)
        n = sum(min(k, s) for s in sizes)
    return total + (1 if n > 1 else 0)


@dataclass
class TopKResult(LevelRequests):
    """Each partition's ranked ids (None: some window has no valid answer) and counts
    (``LevelRequests``: missing windows per level, the estimate's bound above them; cold: exact)."""

    ranked: dict[str | None, list[str] | None] = field(default_factory=dict)
    windows_by_level: list[int] = field(default_factory=list)  # distinct window prompts per level
    invalid: dict[str, str] = field(default_factory=dict)  # prompt -> why its answer was rejected


def check_top_k_arguments(args: Mapping) -> None:
    """Every problem with ``pg_llm.top_k``'s arguments, each naming the argument and the fix."""
    problems: list[str] = []
    problems += missing_text_problems(args, (("partition_by", "'product_id'"), ("text_sql", "'review_text'"),
                                             ("query", "'mentions a broken strap'"), ("id_column", "'review_id'")))
    k, window = args.get("k"), args.get("window")
    for name, value, low, example in (("k", k, 1, 5), ("window", window, 2, DEFAULT_WINDOW),
                                      ("candidates", args.get("candidates"), 1, 30)):
        if value is not None or name == "k":
            problems += whole_number_problem(name, value, low, example)
    if isinstance(k, int) and isinstance(window, int) and not isinstance(k, bool) and window <= k:
        problems.append(f"window: {window} must be larger than k={k} (each window keeps its best k), "
                        f"e.g. window={max(DEFAULT_WINDOW, 2 * k)}")
    if args.get("candidates") is not None and not args.get("embedding_column"):
        problems.append("candidates: only used with embedding_column (the embedding first pass); remove it "
                        "or give embedding_column='<vector column>'")
    if problems:
        raise ConfigError(problems, context="pg_llm.top_k")


def walk_partitions(parts: Mapping[str | None, Sequence[tuple[str, str]]], query: str, k: int, *, window: int,
                    lookup: Callable[[list[str]], dict[str, str]],
                    fill: Callable[[list[str]], None] | None = None) -> TopKResult:
    """Play every partition's tournament level by level (one ``fill`` per level for all partitions).
    ``parts``: partition -> ``(id, text)`` in id order. ``lookup(prompts)``: cached answers (JSON
    text). ``fill(prompts)``: request the missing ones; without it only what is cached is used and
    the rest is counted (``upper_bound``)."""
    result = TopKResult()
    live = {p: list(rows) for p, rows in parts.items()}
    while live:
        plans: dict = {}  # partition -> (final?, [(range, m, prompt or None)])
        for p, rows in live.items():
            if len(rows) <= 1:
                result.ranked[p] = [r[0] for r in rows]
                continue
            final = len(rows) <= window
            wins = [range(0, len(rows))] if final else windows_of(len(rows), window)
            plan = []
            for w in wins:
                m = min(k, len(w))
                asked = final or len(w) > k
                plan.append((w, m, rank_prompt(query, [rows[i][1] for i in w], m) if asked else None))
            plans[p] = (final, plan)
        prompts = sorted({pr for _, plan in plans.values() for _, _, pr in plan if pr is not None})
        if not prompts:
            break
        answers = lookup(prompts)
        missing = [pr for pr in prompts if answers.get(pr) is None]
        result.windows_by_level.append(len(prompts))
        result.missing_by_level.append(len(missing))
        if missing and fill is not None:
            fill(missing)
            answers.update(lookup(missing))
        following = {}
        for p, (final, plan) in plans.items():
            rows, chosen, ok = live[p], [], True
            for w, m, pr in plan:
                if pr is None:
                    chosen.extend(w)
                    continue
                if answers.get(pr) is None:
                    ok = False
                    continue
                try:
                    chosen.extend(w[i] for i in parse_ranking(answers[pr], len(w), m))
                except InvalidRanking as exc:
                    result.invalid[pr] = str(exc)
                    ok = False
            if not ok:
                result.ranked[p] = None
                if fill is None and not final:  # estimate: the levels above, cold
                    result.upper_bound += requests_for(sum(m for _, m, _ in plan), window, k)
            elif final:
                result.ranked[p] = [rows[i][0] for i in chosen]
            else:
                following[p] = [rows[i] for i in sorted(chosen)]  # winners back in id order
        live = following
    return result


# -- on Postgres (a DB-API connection handed in; SQL embeds the model's own SQL, like a fill) -------
def read_partitions(conn, relation_sql: str, partition_sql: str, id_sql: str, text_sql: str,
                    distance_sql: str | None = None, candidates: int | None = None) -> dict:
    """Every partition's ``(id, text)`` rows with a non-NULL text, in id order; with ``distance_sql``
    (an expression over ``pg_llm_src``, smaller is closer) only the ``candidates`` closest per
    partition (ties by id). ConfigError when an id repeats within a partition."""
    inner = (f"select ({partition_sql})::text as p, ({id_sql})::text as i, ({text_sql})::text as t, ({id_sql}) as o"
             + (f", row_number() over (partition by ({partition_sql}) order by ({distance_sql}) nulls last, ({id_sql})) as rn"
                if distance_sql else "")
             + f" from {relation_sql} as pg_llm_src where ({text_sql}) is not null")
    cut = f" where rn <= {int(candidates)}" if distance_sql and candidates else ""
    with conn.cursor() as cur:
        cur.execute(f"select p, i, t from ({inner}) s{cut} order by p, o")
        parts: dict = {}
        for p, i, t in cur.fetchall():
            rows = parts.setdefault(p, [])
            if rows and rows[-1][0] == i:
                raise ConfigError([f"id_column: the id {i!r} appears twice in partition {p!r}; give a column "
                                   "unique within each partition, e.g. id_column='review_id'"],
                                  context="pg_llm.top_k")
            rows.append((i, t))
    return parts


def run_top_k(connect: Callable[[], object], relation_sql: str, partition_sql: str, id_sql: str, text_sql: str,
              query: str, k: int, *, fingerprint: str, audit_schema: str, model: str | None = None,
              window: int = DEFAULT_WINDOW, distance_sql: str | None = None, candidates: int | None = None,
              fill: Callable[[str], object] | None = None, node_id: str | None = None,
              on_error: str | None = None) -> TopKResult:
    """Read the partitions, play their tournaments (``fill(source_sql)`` requests one level's
    missing windows: the column spec's ``prompt_sql`` is ``pg_llm_prompt``). Invalid answers become
    dead letters (kind invalid_output) and their cached rows are marked invalid, so the next run
    asks again; with ``on_error='fail'`` they raise."""
    from ..pg.migrations import ensure_migrated, quote_ident
    from ..pg.writers import ErrorRow, write_errors
    from .aggregate import cached_answers, prompts_source_sql

    conn = connect()
    try:
        conn.autocommit = True  # no transaction held open across the levels' fills
        ensure_migrated(conn, audit_schema)
        parts = read_partitions(conn, relation_sql, partition_sql, id_sql, text_sql, distance_sql, candidates)
        result = walk_partitions(
            parts, query, k, window=window,
            lookup=lambda prompts: cached_answers(conn, audit_schema, fingerprint, prompts, True),
            fill=None if fill is None else (lambda prompts: fill(prompts_source_sql(prompts))))
        if result.invalid and fill is not None:
            keys = {cache_key(fingerprint, pr): why for pr, why in result.invalid.items()}
            with conn.cursor() as cur:
                cur.execute(f"update {quote_ident(audit_schema)}.llm_results set valid = false where key = any(%s)",
                            (list(keys),))
            write_errors(conn, audit_schema, [ErrorRow(key, node_id, model, ErrorKind.INVALID_OUTPUT.value,
                                                       f"pg_llm.top_k window: {why}", column_name="rank")
                                              for key, why in keys.items()])
            if on_error == "fail":
                raise ConfigError([f"{len(keys)} window answer(s) invalid, e.g. {next(iter(keys.values()))}"],
                                  context="pg_llm.top_k")
    finally:
        conn.close()
    return result


def top_k_sql(relation_sql: str, partition_sql: str, id_sql: str, ranked: Mapping, rank_name: str) -> str:
    """The relation's ranked rows: every column plus ``rank_name`` (1..k); failed partitions: no rows."""
    from ..pg.join import quote_literal
    from ..pg.migrations import quote_ident

    triples = ", ".join(f"({quote_literal(p) if p is not None else 'null'}, {quote_literal(i)}, {r})"
                        for p, ids in ranked.items() if ids for r, i in enumerate(ids, 1))
    ranks = (f"(values {triples}) as pg_llm_v(p, i, r)" if triples
             else "(select null::text as p, null::text as i, null::integer as r where false) as pg_llm_v")
    return (f"select pg_llm_src.*, pg_llm_v.r::integer as {quote_ident(rank_name)}\n"
            f"from {relation_sql} as pg_llm_src\n"
            f"join {ranks} on pg_llm_v.p is not distinct from ({partition_sql})::text and pg_llm_v.i = ({id_sql})::text")
