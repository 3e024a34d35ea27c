"""Cache control over both layers: ``llm_results`` (the shared cache) and the engine's journal.

* ``invalidate(conn, schema, journal, filters)`` marks the matching ``llm_results`` rows invalid
  (``valid = false``, ``invalidated_at = now()``; kept for the audit), records each key's
  invalidation in ``llm_invalidations`` AND invalidates the same keys in the local journal: the
  journal answers every key it holds, so invalidating only the table would be silently undone by
  the next run (the journal would hand the old answer back, unpaid). Journals on other machines
  are out of reach: a fill skips any journal entry created at or before its key's
  ``llm_invalidations.invalidated_at`` (decision 0024). The next run on any machine requests
  exactly those keys again.
* ``purge_audit(conn, schema, older_than_days)`` deletes audit rows older than the cutoff:
  ``llm_calls`` (via ``apply_retention``), resolved ``llm_errors``, finished ``llm_runs``,
  ``llm_alerts``, and ``llm_results`` rows that are no longer usable (invalid or expired). Valid
  cached answers are never deleted: they are what the cache is for (use ``invalidate`` first).

Filters (all optional, combined with AND): ``model``, ``node`` (a node's unique_id, or a suffix
such as a model name: ``node_id = x or node_id like '%.x'``), ``column``, ``key``,
``older_than_days`` (created before now - N days), ``where`` (a SQL predicate over ``llm_results``
columns, used as given: TRUSTED SQL, never pass user input there). No filter at all is refused
unless ``all_rows`` is set, so a typo cannot wipe the whole cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError
from ..models.journal import JournalError
from .join import invalidation_cutoffs, quote_literal
from .migrations import apply_retention, ensure_migrated, quote_ident, transaction

__all__ = ["InvalidateFilter", "invalidate", "forget_invalidated", "purge_audit", "what_is_cached"]

_KEY_CHUNK = 5000


@dataclass(frozen=True)
class InvalidateFilter:
    """Which ``llm_results`` rows ``invalidate`` marks invalid (see the module docstring)."""

    model: str | None = None
    node: str | None = None
    column: str | None = None
    key: str | None = None
    older_than_days: float | None = None
    where: str | None = None
    all_rows: bool = False

    NAMES = ("model", "node", "column", "key", "older_than_days", "where", "all")

    @classmethod
    def from_args(cls, args: Mapping[str, Any] | None, path: str = "pg_llm.invalidate") -> "InvalidateFilter":
        """From run-operation ``--args`` (``all`` for ``all_rows``); ConfigError naming each problem."""
        args = {k: v for k, v in dict(args or {}).items() if v is not None}
        problems = [f"{path}: unknown argument {k!r}; use {', '.join(cls.NAMES)}" for k in args if k not in cls.NAMES]
        for name in ("model", "node", "column", "key", "where"):
            if name in args and (not isinstance(args[name], str) or not args[name].strip()):
                problems.append(f"{path}.{name}: {args[name]!r} must be a non-empty string")
        days = args.get("older_than_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0):
            problems.append(f"{path}.older_than_days: {days!r} must be a number of days >= 0, e.g. 30")
        if not isinstance(args.get("all", False), bool):
            problems.append(f"{path}.all: {args['all']!r} must be true or false")
        if problems:
            raise ConfigError(problems, context=path)
        selected = cls(model=args.get("model"), node=args.get("node"), column=args.get("column"),
                       key=args.get("key"), older_than_days=days, where=args.get("where"),
                       all_rows=bool(args.get("all", False)))
        if selected.empty and not selected.all_rows:
            raise ConfigError([f"{path}: no filter given, and invalidating every cached answer would make the "
                               "next run pay for all of them again; give model, node, column, key, "
                               "older_than_days or where, or all: true to really invalidate everything"],
                              context=path)
        return selected

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.model, self.node, self.column, self.key, self.older_than_days,
                                       self.where))

    def predicate(self) -> str:
        """The SQL predicate over ``llm_results r`` (values inlined as literals: ``where`` is SQL)."""
        parts = ["r.valid"]
        if self.model is not None:
            parts.append(f"r.model = {quote_literal(self.model)}")
        if self.node is not None:
            parts.append(f"(r.node_id = {quote_literal(self.node)} or r.node_id like "
                         f"{quote_literal('%.' + _like_escape(self.node))})")
        if self.column is not None:
            parts.append(f"r.column_name = {quote_literal(self.column)}")
        if self.key is not None:
            parts.append(f"r.key = {quote_literal(self.key)}")
        if self.older_than_days is not None:
            parts.append(f"r.created_at < now() - make_interval(secs => {float(self.older_than_days) * 86400.0!r})")
        if self.where is not None:
            parts.append(f"({self.where})")
        return " and ".join(parts)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def invalidate(conn, schema: str, journal, selected: InvalidateFilter) -> dict:
    """Mark the selected valid ``llm_results`` rows invalid and invalidate their keys in ``journal``
    (a ``cache.ResultCache``, or None when there is no local journal). Commits.

    Returns ``{"invalidated": rows marked invalid, "journal": journal entries invalidated,
    "keys": up to 20 of the keys}``. The statement embeds ``where`` as SQL, so it runs without
    parameters."""
    ensure_migrated(conn, schema)
    q = quote_ident(schema)
    with transaction(conn) as cur:
        # llm_invalidations is what journals elsewhere are checked against (decision 0024): the
        # local journal below is the only one this machine can reach.
        cur.execute(f"""with marked as (update {q}.llm_results r set valid = false, invalidated_at = now()
                                         where {selected.predicate()} returning r.key),
                             noted as (insert into {q}.llm_invalidations (key, invalidated_at)
                                       select key, now() from marked
                                       on conflict (key) do update set invalidated_at = excluded.invalidated_at)
                        select key from marked""")
        keys = [row[0] for row in cur.fetchall()]
    in_journal = 0
    if journal is not None:
        for key in keys:
            if journal.invalidate(key):
                in_journal += 1
    return {"invalidated": len(keys), "journal": in_journal, "keys": keys[:20]}


def what_is_cached(conn, schema: str, limit: int = 12) -> str:
    """One line naming the (node, column, model) groups of valid cached answers, with counts: what
    an invalidate that matched nothing says, so a misspelt node or column is obvious."""
    with conn.cursor() as cur:
        cur.execute(f"""select coalesce(node_id, ''), coalesce(column_name, ''), model, count(*)
                        from {quote_ident(schema)}.llm_results where valid
                        group by 1, 2, 3 order by 4 desc, 1, 2, 3 limit %s""", (limit + 1,))
        groups = cur.fetchall()
    if not groups:
        return f"{schema}.llm_results holds no valid cached answer"
    shown = "; ".join(f"node {n or '(none)'} column {c or '(none)'} model {m}: {k}" for n, c, m, k in groups[:limit])
    more = f"; and more (select node_id, column_name, model from {schema}.llm_results)" if len(groups) > limit else ""
    return (f"valid cached answers exist for {shown}{more}. node matches a unique_id or a model name, column an "
            "LLM column's name")


def forget_invalidated(journal, rows, listed_at: float) -> int:
    """Invalidate, in ``journal`` (a ``cache.ResultCache``, or None), the entries created at or
    before their key's last invalidation in the database; ``rows`` come from
    ``join.uncached_prompts_sql``, executed when the local clock read ``listed_at`` (see
    ``join.invalidation_cutoffs``). Call it before the keys are requested. Returns how many.

    A journal that cannot be written raises JournalError: the fill must not go on, since the
    journal would serve those answers."""
    cutoffs = invalidation_cutoffs(rows, listed_at) if journal is not None else None
    if not cutoffs:
        return 0
    try:
        return journal.invalidate_older(cutoffs)
    except Exception as exc:
        raise JournalError(getattr(journal.backend, "directory", None), exc,
                           doing="mark answers invalidated in the database as invalid in") from exc


def purge_audit(conn, schema: str, older_than_days: float) -> dict:
    """Delete audit rows older than ``older_than_days`` days (see the module docstring); commits.
    Returns the number of rows deleted per table (``llm_calls`` also drops whole old partitions)."""
    if isinstance(older_than_days, bool) or not isinstance(older_than_days, (int, float)) or older_than_days < 0:
        raise ConfigError([f"pg_llm.purge_audit.older_than_days: {older_than_days!r} must be a number of days "
                           ">= 0, e.g. 90"], context="pg_llm.purge_audit")
    ensure_migrated(conn, schema)
    q = quote_ident(schema)
    calls = apply_retention(conn, schema, older_than_days)
    cutoff = calls["cutoff"]
    deleted = {"llm_calls": calls["deleted_rows"], "llm_calls_partitions": len(calls["dropped_partitions"])}
    statements = {
        "llm_errors": f"delete from {q}.llm_errors where resolved_at is not null and resolved_at < %(c)s",
        "llm_error_history": f"delete from {q}.llm_error_history where ts < %(c)s",
        "llm_runs": f"delete from {q}.llm_runs where started_at < %(c)s and status is distinct from 'running'",
        "llm_alerts": f"delete from {q}.llm_alerts where ts < %(c)s",
        # only unusable answers: invalidated, or expired, before the cutoff
        "llm_results": f"""delete from {q}.llm_results where created_at < %(c)s
                            and (not valid or (expires_at is not null and expires_at < %(c)s))""",
    }
    with transaction(conn) as cur:
        for table, sql in statements.items():
            cur.execute(sql, {"c": cutoff})
            deleted[table] = cur.rowcount
    return {"cutoff": cutoff, "deleted": deleted}
