"""Claims: how concurrent runs share the work so that no key is ever paid twice.

Before requesting a key, a fill inserts it into ``<audit>.llm_claims`` (``ON CONFLICT DO
NOTHING``) with who it is (run id, node, OS pid and host); keys claimed by another run are set
aside in ``waiting``. Claims are released once the key's answer (or dead letter) is committed.

While a fill runs, its ``ClaimHeartbeat`` (a daemon thread on its own connection) sets
``heartbeat_at = now()`` on its claims every ``claim_timeout_s / 4`` seconds, however long a
request takes. Claims are taken over when their lease (below) ended and their claiming session is
gone or their heartbeat is older than ``claim_timeout_s`` (``llm.claim_timeout_s``, default 120): a
frozen process (SIGSTOP, a paused VM) keeps its session open but beats no more. Keys set aside are waited for by
polling ``llm_results`` (those answered meanwhile are logged as cache hits); the progress then
names who holds them (``waiting_on``: run, node, pid / host / application_name, since when, how
many keys, the age of their last heartbeat).

``Claims`` holds one run's claims (the fill's, and batch_fill's submitter's); the fill owns the
waiting for keys claimed by others (``waiting.ClaimWaiter``), which uses it.

Leases (decision 0022): every claim carries ``lease_until`` (server time), set to
``now() + lease_s`` (``claim_timeout_s / 2``) when claimed and by each heartbeat, and no claim is
taken over before its ``lease_until``: so a run that holds a lease (lease.SendLease, renewed by
the heartbeat from the start of each beat, on the monotonic clock) knows its claims are still its
own, and sends requests only then. The heartbeat's statement returns the keys it renewed; keys
held but not renewed were taken over (the run was paused past claim_timeout_s): the run says so in
one line and sends nothing more for them. A claim whose session is gone is taken over once its
lease expired, or at once when its claimer ran on this host and its OS process is dead (kill -9):
a run whose claim session was terminated but which still runs keeps renewing its lease, and
keeps its keys, until it stops.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ..errors import redact
from ..models.lease import SendLease
from .batch_store import in_open_batch_sql
from .join import fresh_sql
from .migrations import ensure_call_partitions, quote_ident

__all__ = ["Claims", "ClaimHeartbeat", "close_quietly", "heartbeat_every", "lease_seconds", "send_lease"]

log = logging.getLogger("dbt_pg_llm")

_PID = os.getpid()
_HOST = socket.gethostname()
_MAX_CLAIMERS_SHOWN = 3


def heartbeat_every(claim_timeout_s: float) -> float:
    """Seconds between two heartbeats: four beats per timeout (at most 30 s apart)."""
    return max(0.1, min(30.0, claim_timeout_s / 4))


def lease_seconds(claim_timeout_s: float) -> float:
    """A claim's lease (server side): two heartbeats at least (a late beat must not hold requests),
    well within claim_timeout_s (a claim is never taken over before its lease ends)."""
    return max(0.2, claim_timeout_s / 2)


def send_lease(claim_timeout_s: float) -> SendLease:
    """The client side of a fill's lease: 10% shorter than the server's (clock rates, the time a
    statement takes to reach the server); a request waits at most claim_timeout_s for a renewal."""
    return SendLease(lease_seconds(claim_timeout_s) * 0.9, hold_s=claim_timeout_s)


class ClaimHeartbeat:
    """Keeps one fill's claims alive while the fill runs (see the module docstring).

    Beats on its own autocommit connection, opened on the first beat (a short fill opens none)
    and reopened after an error; a failed beat is only logged: the next one may succeed, and the
    worst case is that another run takes the claims over (once their lease expired: the fill's
    requests wait for a renewal from then on). ``lease``: renewed by each beat; None for a caller
    that sends nothing itself."""

    def __init__(self, connect: Callable[[], Any], q: str, token: str, every_s: float,
                 lease: SendLease | None = None, lease_s: float | None = None):
        self.connect = connect
        self.q = q
        self.token = token
        self.every_s = every_s
        self.lease = lease
        self.lease_s = float(lease_s if lease_s is not None else every_s * 2)
        self.lost = 0  # keys found taken over by another run
        self._stop = threading.Event()
        # a beat is due every every_s, or at once when a request waits for a renewal (after a pause)
        self._wake = lease.renewal_wanted if lease is not None else threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"llm-claims-{self.token[:8]}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.every_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.beat()
            except Exception as exc:  # never let a heartbeat kill anything; try again next time
                log.debug("claim heartbeat failed: %s", redact(str(exc)).strip())
                self._close()

    def beat(self) -> int:
        """Refresh our claims' heartbeat and lease now; return how many claims we hold."""
        started = time.monotonic()  # before the statement: the server's now() is later
        held = self.lease.held() if self.lease is not None else set()
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f"""update {self.q}.llm_claims
                            set heartbeat_at = now(), lease_until = now() + make_interval(secs => %s)
                            where claim_token = %s returning key""", (self.lease_s, self.token))
            ours = {row[0] for row in cur.fetchall()}
            if self.lease is not None:
                lost = self.lease.renewed(started, held, ours)
                if lost:
                    self.lost += len(lost)
                    self._say_lost(cur, lost)
        return len(ours)

    def _say_lost(self, cur, lost: set[str]) -> None:
        """One line: how many keys another run took over, and which run (holding the claim now, or
        having answered and released it)."""
        cur.execute(f"""select coalesce(c.run_id, r.run_id, '?'), count(*) from unnest(%s::text[]) u(k)
                        left join {self.q}.llm_claims c on c.key = u.k
                        left join {self.q}.llm_results r on r.key = u.k and c.key is null
                        group by 1 order by 2 desc limit %s""", (list(lost), _MAX_CLAIMERS_SHOWN))
        by = ", ".join(f"{n} by run {run}" for run, n in cur.fetchall())
        log.warning("claims on %d key(s) of this run were taken over by another run while this one was paused "
                    "or cut off from Postgres (%s): not requesting them, their answers come from that run",
                    len(lost), by)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        close_quietly(conn)


class Claims:
    """One run's claims on ``<schema>.llm_claims``, held on the ``reader`` connection's session (a
    claim whose session is gone may be taken over), identified by ``token``.

    ``writer()`` gives the connection that logs late cache hits (the fill's writer, which it may
    reopen). ``report`` (a FillReport) counts those hits. The caller owns both connections and the
    ``ClaimHeartbeat``; ``release_all()`` before closing them."""

    def __init__(self, reader, writer: Callable[[], Any], schema: str, run, model: str, kind: str, report,
                 claim_timeout_s: float, token: str, lease: SendLease | None = None,
                 column_name: str | None = None):
        self.reader, self.writer = reader, writer
        self.column_name = column_name  # the column whose hits log_late_hits records (llm_calls)
        self.schema, self.q = schema, quote_ident(schema)
        self.run_ctx, self.model, self.kind, self.report = run, model, kind, report
        self.claim_timeout_s = claim_timeout_s
        self.lease_s = lease_seconds(claim_timeout_s)
        self.token = token
        self.lease = lease  # told which keys we hold (what the heartbeat must confirm), if any

    def insert(self, cur, keys: list[str]) -> set[str]:
        """Claim those of ``keys`` nobody holds a claim on; return them (now ours).

        Inserted in key order: two runs claiming overlapping keys each wait on the other's
        uncommitted rows, and in different orders that wait is a cycle Postgres breaks by
        aborting one of them ('deadlock detected'); in one order one simply waits."""
        cur.execute(f"""
            insert into {self.q}.llm_claims (key, run_id, claimed_at, heartbeat_at, claim_token, backend_pid,
                                             node_id, client_pid, client_host, lease_until)
            select k, %s, now(), now(), %s, pg_backend_pid(), %s, %s, %s, now() + make_interval(secs => %s)
            from unnest(%s::text[]) k order by k
            on conflict (key) do nothing returning key""",
                    (self.run_ctx.run_id, self.token, self.run_ctx.node_id, _PID, _HOST, self.lease_s, keys))
        return {row[0] for row in cur.fetchall()}

    def claim(self, keys: list[str]) -> list[str]:
        """Claim ``keys``; return those now ours that still need an answer (in input order)."""
        started = self.lease.claiming() if self.lease is not None else None
        with self.reader.cursor() as cur:
            mine = self.insert(cur, keys)
        if self.lease is not None:
            self.lease.claimed(mine, started)
        return self._drop_answered([k for k in keys if k in mine])

    def take_over(self, keys: list[str]) -> list[str]:
        """Claim keys whose claim vanished, or whose lease expired and whose claimer's heartbeat is
        older than claim_timeout_s or whose claiming session is gone, or whose claiming session is
        gone and whose claimer was a process of this host that is dead. (greatest(): a claimer from
        before migration 6 refreshed claimed_at instead; one from before migration 12 has no lease.)"""
        started = self.lease.claiming() if self.lease is not None else None
        with self.reader.cursor() as cur:
            dead = self._dead_claimers(cur, keys)
            mine = self.insert(cur, keys)
            cur.execute(f"""
                update {self.q}.llm_claims c
                set run_id = %s, claim_token = %s, claimed_at = now(), heartbeat_at = now(),
                    lease_until = now() + make_interval(secs => %s),
                    backend_pid = pg_backend_pid(), node_id = %s, client_pid = %s, client_host = %s
                where c.key = any(%s::text[]) and c.claim_token is distinct from %s
                  and ((coalesce(c.lease_until, '-infinity') < now()
                        and (greatest(c.heartbeat_at, c.claimed_at) < now() - make_interval(secs => %s)
                             or not exists (select 1 from pg_stat_activity a where a.pid = c.backend_pid)))
                       or (c.client_host = %s and c.client_pid = any(%s::int[])
                           and not exists (select 1 from pg_stat_activity a where a.pid = c.backend_pid)))
                returning c.key""",
                        (self.run_ctx.run_id, self.token, self.lease_s, self.run_ctx.node_id, _PID, _HOST, keys,
                         self.token, float(self.claim_timeout_s), _HOST, dead))
            mine.update(row[0] for row in cur.fetchall())
        if self.lease is not None:
            self.lease.claimed(mine, started)
        return self._drop_answered([k for k in keys if k in mine])

    def _dead_claimers(self, cur, keys: list[str]) -> list[int]:
        """OS pids of this host's claimers of ``keys`` that no longer exist: killed (kill -9, OOM),
        so they send nothing more; their claims need not wait for their lease to expire."""
        cur.execute(f"""select distinct client_pid from {self.q}.llm_claims
                        where key = any(%s::text[]) and claim_token is distinct from %s
                          and client_host = %s and client_pid is not null""", (keys, self.token, _HOST))
        return [pid for (pid,) in cur.fetchall() if not _process_exists(pid)]

    def _drop_answered(self, keys: list[str]) -> list[str]:
        """Keys just claimed may have been answered by the previous claimer in between (it writes
        the result before releasing its claim), or be in a provider batch it submitted meanwhile
        (batch_fill records the batch before releasing): release and skip those."""
        if not keys:
            return keys
        answered, batched = self.settled(keys)
        if answered or batched:
            self.release(answered + batched)
        if answered:
            self.log_late_hits(answered)
        gone = set(answered) | set(batched)
        return [k for k in keys if k not in gone]

    def settled(self, keys: list[str]) -> tuple[list[str], list[str]]:
        """(answered, in an open provider batch) among ``keys``: no request of ours is needed for either."""
        with self.reader.cursor() as cur:
            cur.execute(f"""
                select u.k, exists (select 1 from {self.q}.llm_results r where r.key = u.k and {fresh_sql('r')})
                from unnest(%s::text[]) u(k)
                where exists (select 1 from {self.q}.llm_results r where r.key = u.k and {fresh_sql('r')})
                   or {in_open_batch_sql(self.schema, 'u.k')}""", (keys,))
            rows = cur.fetchall()
        return [k for k, done in rows if done], [k for k, done in rows if not done]

    def release(self, keys: list[str]) -> None:
        if not keys:
            return
        # the lease forgets them first: a heartbeat whose statement runs after this delete no longer
        # renews them, and must not count them as taken over (it checks only keys still held)
        if self.lease is not None:
            self.lease.released(keys)
        with self.reader.cursor() as cur:
            cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s and key = any(%s::text[])",
                        (self.token, keys))

    def confirm(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` still ours, their heartbeat and lease renewed now (one statement): what
        a caller about to pay for them in one go (a provider batch) checks first."""
        if not keys:
            return keys
        with self.reader.cursor() as cur:
            cur.execute(f"""update {self.q}.llm_claims
                            set heartbeat_at = now(), lease_until = now() + make_interval(secs => %s)
                            where claim_token = %s and key = any(%s::text[]) returning key""",
                        (self.lease_s, self.token, keys))
            ours = {row[0] for row in cur.fetchall()}
        return [k for k in keys if k in ours]

    def release_all(self) -> None:
        """Every claim of ours, on whichever connection still works (stale claims expire anyway)."""
        for conn in (self.reader, self.writer()):
            if conn is None or conn.closed:
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s", (self.token,))
                return
            except Exception:  # try the other connection
                continue

    def claimers(self, keys: list[str]) -> list[dict]:
        """Who holds the claims on ``keys`` (the biggest holders first): what a waiting run shows."""
        with self.reader.cursor() as cur:
            cur.execute(f"""
                select c.run_id, c.node_id, c.client_pid, c.client_host, a.application_name, min(c.claimed_at),
                       extract(epoch from now() - min(c.claimed_at)),
                       extract(epoch from now() - max(greatest(c.heartbeat_at, c.claimed_at))), count(*)
                from {self.q}.llm_claims c left join pg_stat_activity a on a.pid = c.backend_pid
                where c.key = any(%s::text[]) and c.claim_token is distinct from %s
                group by 1, 2, 3, 4, 5 order by count(*) desc, 6 limit %s""",
                        (keys, self.token, _MAX_CLAIMERS_SHOWN))
            rows = cur.fetchall()
        return [{"run_id": run_id, "node_id": node_id, "pid": pid, "host": host, "application_name": app,
                 "since": since.astimezone(timezone.utc).isoformat(timespec="seconds") if since else None,
                 "since_s": round(float(since_s or 0), 1), "heartbeat_age_s": round(float(beat_s or 0), 1),
                 "keys": int(count)}
                for run_id, node_id, pid, host, app, since, since_s, beat_s, count in rows]

    def log_late_hits(self, keys: list[str], column_name: str | None = None) -> None:
        """Keys answered by a concurrent run while we waited: cache hits for us (one INSERT ... SELECT).
        A key this run already logged (as a hit or paid) is not logged again: a hit counts once per
        key per run (run_totals.py)."""
        with self.writer().cursor() as cur:
            ensure_call_partitions(cur, self.schema, [datetime.now(timezone.utc)])
            cur.execute(f"""
                with ins as (
                    insert into {self.q}.llm_calls (ts, run_id, node_id, model, operation, input_hash, attempt,
                                                   latency_ms, cost_usd, cached, saved_cost_usd, column_name)
                    select now(), %(run)s, %(node)s, %(model)s, %(op)s, r.key, 0, 0, 0, true, r.cost_usd, %(column)s
                    from {self.q}.llm_results r where r.key = any(%(keys)s::text[])
                      and not exists (select 1 from {self.q}.llm_calls c
                                      where c.run_id = %(run)s and c.input_hash = r.key)
                    returning saved_cost_usd)
                select count(*), coalesce(sum(saved_cost_usd), 0) from ins""",
                        {"run": self.run_ctx.run_id, "node": self.run_ctx.node_id, "model": self.model,
                         "op": self.kind, "keys": keys, "column": column_name or self.column_name})
            hits, saved = cur.fetchone()
        self.report.cache_hits += int(hits)
        self.report.requests_total -= int(hits)
        self.report.saved_cost_usd += float(saved)


def _process_exists(pid: int) -> bool:
    """Whether an OS process ``pid`` exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists (another user's), or cannot tell: assume alive
        return True
    return True


def close_quietly(*conns) -> None:
    """Close connections that are open, ignoring errors (on the way out)."""
    for conn in conns:
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except Exception:
                pass
