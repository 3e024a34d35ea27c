"""The ``llm_runs`` row while a run is alive: started, heartbeat, crashed.

A fill calls ``run_started`` before it requests anything: the invocation's row then exists with
status ``running`` (and one more active fill), so a run killed mid-way (``kill -9``, power cut)
still leaves a trace. ``run_heartbeat`` refreshes ``heartbeat_at`` while it fills. The next run
marks every ``running`` row whose heartbeat is older than ``dead_after_s`` ``crashed``: a live
fill heartbeats every few seconds while answers arrive, so only a dead process goes that quiet.
The end of a fill is ``writers.record_run(..., finished_fill=True)``.
"""
from __future__ import annotations

from .migrations import quote_ident, transaction
from .run_totals import derive_run_totals

__all__ = ["run_started", "run_heartbeat", "mark_crashed_runs", "RUN_DEAD_AFTER_S"]

# A fill heartbeats on each flush (every ~2 s while answers arrive); one request may take up to
# timeout x retries with backoff, so only a much longer silence means the process is gone.
RUN_DEAD_AFTER_S = 600.0


def mark_crashed_runs(conn, schema: str, dead_after_s: float = RUN_DEAD_AFTER_S, *, except_run: str | None = None) -> int:
    """Mark ``running`` rows silent for ``dead_after_s`` seconds ``crashed`` and settle them: their
    counters are derived from the ``llm_calls`` rows they left (a killed run never recorded its
    own; run_totals.py). Returns how many."""
    with transaction(conn) as cur:
        cur.execute(f"""
            update {quote_ident(schema)}.llm_runs set status = 'crashed', active_fills = 0,
                   ended_at = coalesce(heartbeat_at, started_at)
            where status = 'running' and run_id is distinct from %s
              and coalesce(heartbeat_at, started_at) < now() - make_interval(secs => %s)
            returning run_id""",
                    (except_run, float(dead_after_s)))
        crashed = [row[0] for row in cur.fetchall()]
        for run_id in crashed:
            derive_run_totals(cur, schema, run_id)
        return len(crashed)


def run_started(conn, schema: str, run_id: str, *, target: str | None = None,
                dead_after_s: float = RUN_DEAD_AFTER_S) -> None:
    """Before a fill requests anything: mark dead runs crashed, then make this run's row say
    ``running`` with one more active fill (a crashed row of the same run id, e.g. a retried
    invocation, comes back to life)."""
    mark_crashed_runs(conn, schema, dead_after_s, except_run=run_id)
    with transaction(conn) as cur:
        cur.execute(f"""
            insert into {quote_ident(schema)}.llm_runs as r (run_id, target, status, heartbeat_at, active_fills)
            values (%s, %s, 'running', now(), 1)
            on conflict (run_id) do update set status = 'running', heartbeat_at = now(), ended_at = null,
                active_fills = r.active_fills + 1, target = coalesce(excluded.target, r.target)""",
                    (run_id, target))


def run_heartbeat(conn, schema: str, run_id: str) -> None:
    with transaction(conn) as cur:
        cur.execute(f"update {quote_ident(schema)}.llm_runs set heartbeat_at = now() where run_id = %s", (run_id,))
