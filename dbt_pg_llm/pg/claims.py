"""Claims: how concurrent runs share the work so that no key is ever paid twice.

Before requesting a key, a fill inserts it into ``<audit>.llm_claims`` (``ON CONFLICT DO
NOTHING``); keys claimed by another run are set aside in ``waiting``. Claims are released once
the key's answer (or dead letter) is committed, refreshed by a heartbeat while a fill works, and
taken over when their claimer died (its backend session is gone) or went stale. Keys set aside
are waited for by polling ``llm_results``; those answered meanwhile are logged as cache hits.

``_Claims`` is a mixin of the fill (``fill._Fill``): it uses the fill's ``reader`` connection
(which holds the claims) and ``writer`` connection, ``q``/``schema``, ``token``, ``run_ctx``,
``spec``, ``report``, ``waiting``, the timing settings, and its ``_flush``, ``_request``,
``_fail_keys`` and ``_emit_progress``.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from ..errors import ErrorKind
from .join import _fresh
from .migrations import ensure_call_partitions

HEARTBEAT_EVERY_S = 30.0


class _Claims:
    """The claims half of ``fill._Fill`` (see the module docstring for what it relies on)."""

    # -- claims -----------------------------------------------------------------------------------
    def _insert_claims(self, cur, keys: list[str]) -> set[str]:
        """Claim those of ``keys`` nobody holds a claim on; return them (now ours)."""
        cur.execute(f"""
            insert into {self.q}.llm_claims (key, run_id, claimed_at, claim_token, backend_pid)
            select k, %s, now(), %s, pg_backend_pid() from unnest(%s::text[]) k
            on conflict (key) do nothing returning key""", (self.run_ctx.run_id, self.token, keys))
        return {row[0] for row in cur.fetchall()}

    def _claim(self, keys: list[str]) -> list[str]:
        """Claim ``keys``; return those now ours that still need an answer (in input order)."""
        with self.reader.cursor() as cur:
            mine = self._insert_claims(cur, keys)
        return self._drop_answered([k for k in keys if k in mine])

    def _take_over(self, keys: list[str]) -> list[str]:
        """Claim keys whose claim vanished, went stale, or whose claiming session is gone."""
        with self.reader.cursor() as cur:
            mine = self._insert_claims(cur, keys)
            cur.execute(f"""
                update {self.q}.llm_claims c
                set run_id = %s, claim_token = %s, claimed_at = now(), backend_pid = pg_backend_pid()
                where c.key = any(%s::text[]) and c.claim_token is distinct from %s
                  and (c.claimed_at < now() - make_interval(secs => %s)
                       or not exists (select 1 from pg_stat_activity a where a.pid = c.backend_pid))
                returning c.key""",
                        (self.run_ctx.run_id, self.token, keys, self.token, float(self.claim_stale_s)))
            mine.update(row[0] for row in cur.fetchall())
        return self._drop_answered([k for k in keys if k in mine])

    def _drop_answered(self, keys: list[str]) -> list[str]:
        """Keys just claimed may have been answered by the previous claimer in between (it writes
        the result before releasing its claim): release and skip those."""
        if not keys:
            return keys
        with self.reader.cursor() as cur:
            cur.execute(f"select key from {self.q}.llm_results r where r.key = any(%s::text[]) and {_fresh('r')}",
                        (keys,))
            answered = {row[0] for row in cur.fetchall()}
        if answered:
            self._release(list(answered))
            self._log_late_hits(list(answered))
        return [k for k in keys if k not in answered]

    def _release(self, keys: list[str]) -> None:
        if not keys:
            return
        with self.reader.cursor() as cur:
            cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s and key = any(%s::text[])",
                        (self.token, keys))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self.last_heartbeat = now
        with self.reader.cursor() as cur:
            cur.execute(f"update {self.q}.llm_claims set claimed_at = now() where claim_token = %s", (self.token,))

    def _release_all(self) -> None:
        for conn in (self.reader, self.writer):
            if conn is None or conn.closed:
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(f"delete from {self.q}.llm_claims where claim_token = %s", (self.token,))
                break
            except Exception:  # try the other connection; stale claims expire anyway
                continue
        for conn in (self.reader, self.writer):
            if conn is not None and not conn.closed:
                try:
                    conn.close()
                except Exception:
                    pass

    # -- keys claimed by other runs ---------------------------------------------------------------
    def _wait_for_others(self) -> None:
        deadline = time.monotonic() + self.wait_timeout_s
        delay = self.poll_s
        while self.waiting:
            if self.report.stopped == "error":
                return  # failing anyway: don't wait
            self._flush()
            keys = list(self.waiting)
            with self.reader.cursor() as cur:
                cur.execute(f"select key from {self.q}.llm_results r where r.key = any(%s::text[]) and {_fresh('r')}",
                            (keys,))
                done = [row[0] for row in cur.fetchall()]
            if done:
                self._log_late_hits(done)
                for key in done:
                    self.waiting.pop(key, None)
            if not self.waiting:
                return
            mine = self._take_over(list(self.waiting))
            if mine:
                prompts = {k: self.waiting.pop(k) for k in mine}
                if self.report.stopped == "max_cost":
                    self._release(mine)
                    self._fail_keys(mine, ErrorKind.QUOTA, "max_cost_usd_per_run reached")
                else:
                    self._request((k, self.spec.model_input(p)) for k, p in prompts.items())
                delay = self.poll_s
                continue
            if time.monotonic() >= deadline:
                self._fail_keys(list(self.waiting), ErrorKind.TIMEOUT,
                                f"gave up after {self.wait_timeout_s:.0f}s waiting for another run that "
                                "claimed this key to answer it")
                self.waiting.clear()
                return
            self._heartbeat()
            self._emit_progress()
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def _log_late_hits(self, keys: list[str]) -> None:
        """Keys answered by a concurrent run while we waited: cache hits for us (one INSERT ... SELECT)."""
        with self.writer.cursor() as cur:
            ensure_call_partitions(cur, self.schema, [datetime.now(timezone.utc)])
            cur.execute(f"""
                with ins as (
                    insert into {self.q}.llm_calls (ts, run_id, node_id, model, operation, input_hash, attempt,
                                                   latency_ms, cost_usd, cached, saved_cost_usd)
                    select now(), %s, %s, %s, %s, r.key, 0, 0, 0, true, r.cost_usd
                    from {self.q}.llm_results r where r.key = any(%s::text[])
                    returning saved_cost_usd)
                select count(*), coalesce(sum(saved_cost_usd), 0) from ins""",
                        (self.run_ctx.run_id, self.run_ctx.node_id, self.spec.model, self.spec.kind, keys))
            hits, saved = cur.fetchone()
        self.report.cache_hits += int(hits)
        self.report.requests_total -= int(hits)
        self.report.saved_cost_usd += float(saved)
