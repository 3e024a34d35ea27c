"""A run's totals, derived from ``llm_calls`` (issue 17.1, decision 0026).

``llm_calls`` holds one row per HTTP request the engine made (every attempt, ``Model._log``) and
one per provider batch line collected (``batch_store.apply_answers``), each with its run, node,
column and model; cache hits are ``cached = true`` rows. Every total people read is computed from
those rows, never added up on the side, so the totals cannot drift from what was logged:

* requests / prompt_tokens / completion_tokens / cost_usd: the run's rows with ``cached = false``;
* cache_hits / saved_cost_usd: the distinct keys the run found answered and did NOT pay for
  itself (a key logged as a hit twice counts once; a key the run paid for is not a saving), each
  with what it cost when it was paid (the largest ``saved_cost_usd`` logged for it).

``derive_run_totals`` writes them into the run's ``llm_runs`` row; ``writers.record_run`` calls it
when a fill ends and ``runs.mark_crashed_runs`` / ``settle_runs`` when a dead run is settled, after
the call logs a killed process left in its spool were replayed (``call_spool.replay_spools``).
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime

from ..errors import redact
from ..models.call_spool import orphaned
from .migrations import ensure_call_partitions, quote_ident, transaction

__all__ = ["LOST", "derive_run_totals", "run_totals", "settle_runs", "replay_spools", "spool_dir_of", "spool_dir_for",
           "DERIVED_COUNTS"]

log = logging.getLogger("dbt_pg_llm")

LOST = "lost"  # llm_calls.error_kind of a request whose process died waiting for its answer

# llm_runs columns computed from llm_calls (the others -- rows, distinct_keys, errors -- are the
# fills' own counts of their source, which llm_calls does not describe)
DERIVED_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits", "saved_cost_usd")


def _totals_sql(q: str, one_column: bool = False) -> str:
    where = "run_id = %(run)s"
    if one_column:  # one fill: its node and column (NULL-safe: a DataFrame session has no node)
        where += " and node_id is not distinct from %(node)s and column_name is not distinct from %(column)s"
    return f"""
        with c as (select input_hash, cached, prompt_tokens, completion_tokens, cost_usd, saved_cost_usd
                   from {q}.llm_calls where {where}),
             paid as (select count(*) as requests, coalesce(sum(prompt_tokens), 0) as prompt_tokens,
                             coalesce(sum(completion_tokens), 0) as completion_tokens,
                             coalesce(sum(cost_usd), 0) as cost_usd
                      from c where not cached),
             -- one group per key (a hash aggregate: linear, where a NOT EXISTS over the CTE was
             -- quadratic): a hit when the key has a hit row and no paid row in this run
             hits as (select count(*) as cache_hits, coalesce(sum(saved), 0) as saved_cost_usd
                      from (select max(saved_cost_usd) filter (where cached) as saved
                            from c where input_hash is not null
                            group by input_hash
                            having bool_or(cached) and not bool_or(not cached)) k)
        select paid.requests, paid.prompt_tokens, paid.completion_tokens, paid.cost_usd,
               hits.cache_hits, hits.saved_cost_usd
        from paid, hits"""


def run_totals(cur, schema: str, run_id: str, *, node_id: str | None = None, column_name: str | None = None,
               one_column: bool = False) -> dict:
    """The run's derived totals (``DERIVED_COUNTS``) as computed from its ``llm_calls`` rows; with
    ``one_column``, those of one fill (the rows of ``node_id`` and ``column_name``)."""
    cur.execute(_totals_sql(quote_ident(schema), one_column),
                {"run": run_id, "node": node_id, "column": column_name})
    row = cur.fetchone()
    return {name: (float(v) if name.endswith("_usd") else int(v)) for name, v in zip(DERIVED_COUNTS, row)}


def derive_run_totals(cur, schema: str, run_id: str) -> None:
    """Set the run's ``llm_runs`` counters that ``llm_calls`` describes from its rows (in the
    caller's transaction, on its cursor) and stamp ``settled_at``."""
    q = quote_ident(schema)
    sets = ", ".join(f"{c} = t.{c}" for c in DERIVED_COUNTS)
    cur.execute(f"""
        update {q}.llm_runs r set {sets}, settled_at = now()
        from ({_totals_sql(q)}) t
        where r.run_id = %(run)s""", {"run": run_id})


def settle_runs(conn, schema: str, run_ids) -> int:
    """Derive the totals of ``run_ids`` (e.g. runs just marked crashed, or whose rows a spool
    replay added); one transaction. Returns how many runs were settled."""
    run_ids = sorted({r for r in run_ids if r})
    if not run_ids:
        return 0
    with transaction(conn) as cur:
        for run_id in run_ids:
            derive_run_totals(cur, schema, run_id)
    return len(run_ids)


def spool_dir_of(engine) -> str | None:
    """Where the engine's call spool lives: ``call_spool`` inside its journal directory (local disk,
    next to the paid answers); None without a journal on disk."""
    directory = getattr(getattr(getattr(engine, "cache", None), "backend", None), "directory", None)
    return spool_dir_for(directory) if directory else None


def spool_dir_for(journal_dir) -> str:
    """The call spool of the journal at ``journal_dir`` (``llm.journal_dir``)."""
    return os.path.join(str(journal_dir), "call_spool")


def replay_spools(conn, schema: str, directory: str | None) -> set[str]:
    """Write the call records left in the spool segments of dead processes of this host to
    ``llm_calls`` (those whose ``call_id`` is not there yet; a request announced as sent without a
    record becomes a row of error_kind ``lost``), delete the segments, and settle the runs they
    belong to (``derive_run_totals``). Returns those runs' ids."""
    from .writers import CALL_COLUMNS, call_rows, copy_rows

    if not directory or not os.path.isdir(directory):
        return set()
    records, paths = [], []
    for name in sorted(os.listdir(directory)):
        if not orphaned(name):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        record["timestamp"] = datetime.fromisoformat(record["timestamp"])
                    except (ValueError, KeyError, TypeError):  # the line being written when the process died
                        continue
                    records.append(record)
        except OSError as exc:
            log.warning("could not read the call spool %s: %s", path, redact(str(exc)))
            continue
        paths.append(path)
    # a request announced as sent with no record of its own: the process died waiting for it. It
    # counts as a request of unknown outcome (the provider may have billed it; tokens unknown)
    answered = {r.get("call_id") for r in records if not r.get("sent")}
    records = [r for r in records if not r.get("sent")] + [
        {**r, "error_kind": LOST, "error_message": "the process ended while waiting for the answer; the provider "
         "may have billed it (tokens unknown)", "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        for r in records if r.get("sent") and r.get("call_id") not in answered]
    runs = {(r.get("context") or {}).get("run_id") for r in records} - {None}
    if records:
        q = quote_ident(schema)
        rows = call_rows(records)
        with transaction(conn) as cur:
            ensure_call_partitions(cur, schema, [row[0] for row in rows])
            cur.execute(f"create temp table if not exists llm_calls_spool (like {q}.llm_calls) on commit drop")
            copy_rows(cur, "pg_temp.llm_calls_spool", CALL_COLUMNS, rows)
            cols = ", ".join(CALL_COLUMNS)
            cur.execute(f"""
                insert into {q}.llm_calls ({cols})
                select distinct on (s.call_id) {", ".join("s." + c for c in CALL_COLUMNS)}
                from pg_temp.llm_calls_spool s
                where s.call_id is not null and not exists (
                    select 1 from {q}.llm_calls c where c.run_id is not distinct from s.run_id and c.call_id = s.call_id)
                order by s.call_id""")
            replayed = cur.rowcount
        if replayed:
            log.warning("%d paid request(s) of run(s) %s that ended without logging them were written to %s.llm_calls "
                        "from the call spool", replayed, ", ".join(sorted(runs)), schema)
    settle_runs(conn, schema, runs)
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    return runs
