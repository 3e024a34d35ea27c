"""The audit side of an embeddings fill (decision 0034): its run's ``llm_runs`` row, its requests'
``llm_calls`` rows through the call spool, and its failed texts' ``llm_errors`` dead letters.

    from dbt_pg_llm.operators.embed_audit import EmbedRun, spool_sink, write_call

    with EmbedRun(connect, engine, "llm_audit", run, "embedder", "emb") as scope:  # run_started ...
        scope.report = fill(...)                                                     # ... record_run
    sink = spool_sink(engine)            # a spooling BufferedSink (None without a journal on disk)
    sink.sending(call_id, fields)        # before the request goes out
    write_call(sink, conn, lock, "llm_audit", model_log)  # after it: spooled, written, acknowledged

Kept apart from embed.py (the HTTP and vector hot path); no dbt import.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..errors import redact

__all__ = ["EmbedRun", "spool_sink", "write_call", "write_dead_letters"]

_log = logging.getLogger("dbt_pg_llm.embed")


def spool_sink(engine):
    """A spooling BufferedSink in the engine's call spool directory (None without a journal on disk)."""
    from ..models.logs import BufferedSink
    from ..pg.run_totals import spool_dir_of

    directory = spool_dir_of(engine)
    return BufferedSink(spool_dir=directory) if directory else None


def write_call(sink, conn, lock: threading.Lock, audit_schema: str, record) -> None:
    """One ``llm_calls`` row (a ModelLog whose ``call_id`` settles the request's spool marker):
    appended to the spool, written, then acknowledged, so a failed write leaves the record on disk
    for the next run to replay. Never raises: the vectors are what was paid for."""
    from ..pg.writers import write_calls

    with lock:
        try:
            if sink is None:
                write_calls(conn, audit_schema, [record])
                return
            sink.emit(record)
            records = sink.drain()
            write_calls(conn, audit_schema, records)
            sink.written(len(records))
        except Exception as exc:
            _log.warning("embeddings: an llm_calls row could not be written (kept in the call spool for the "
                         "next run): %s", redact(str(exc)))


def write_dead_letters(conn, audit_schema: str, run, model_name: str, column_name: str | None, errors: dict) -> None:
    """One ``llm_errors`` row per failed text (``errors``: key -> "kind: message"); the open dead
    letters of this model whose text now has a vector are resolved."""
    from ..pg.migrations import quote_ident
    from ..pg.writers import ErrorRow, write_errors
    from .embed import EMBEDDINGS_TABLE

    q = quote_ident(audit_schema)
    rows = []
    for key, message in errors.items():
        kind = message.split(":", 1)[0].strip() or "api"
        rows.append(ErrorRow(key=key, node_id=getattr(run, "node_id", None) or "", model=model_name, error_kind=kind,
                             message=redact(message)[:1000], run_id=getattr(run, "run_id", None),
                             attempts=0 if kind in ("budget", "claimed") else 1, column_name=column_name))
    if rows:
        write_errors(conn, audit_schema, rows)
    with conn.cursor() as cur:  # only open dead letters are read: cheap on a warm rerun
        cur.execute(f"""update {q}.llm_errors e set resolved_at = now()
                        where e.resolved_at is null and e.model = %s
                          and exists (select 1 from {q}.{EMBEDDINGS_TABLE} v where v.key = e.key)""", (model_name,))


class EmbedRun:
    """A fill's bookkeeping. With a run id: on entry ``runs.run_started`` (the row says running, one
    more active fill) and the replay of dead processes' call spools; on exit ``writers.record_run``
    (outcome, totals derived from ``llm_calls``). Dead letters of ``report.errors`` either way."""

    def __init__(self, connect: Callable[[], Any], engine, audit_schema: str, run, model_name: str,
                 column_name: str | None):
        self.connect, self.engine, self.schema, self.run = connect, engine, audit_schema, run
        self.model_name, self.column_name = model_name, column_name
        self.run_id = getattr(run, "run_id", None)
        self.report = None  # set by the caller once filled (an EmbedReport)
        self.conn = None

    def __enter__(self) -> "EmbedRun":
        if self.run_id:
            from ..pg.migrations import ensure_migrated
            from ..pg.run_totals import replay_spools, spool_dir_of
            from ..pg.runs import run_started

            self.conn = self.connect()
            self.conn.autocommit = True
            ensure_migrated(self.conn, self.schema)
            run_started(self.conn, self.schema, self.run_id, target=getattr(self.run, "target", None))
            replay_spools(self.conn, self.schema, spool_dir_of(self.engine))  # dead runs' unlogged requests
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from ..pg.writers import record_run

        report = self.report if exc_type is None else None
        try:
            if report is not None and (report.errors or self.conn is not None):
                self.conn = self.conn or self.connect()
                self.conn.autocommit = True
                write_dead_letters(self.conn, self.schema, self.run, self.model_name, self.column_name, report.errors)
            if self.run_id:
                status = "failed" if report is None else "partial" if report.errors else "success"
                record_run(self.conn, self.schema, self.run_id, target=getattr(self.run, "target", None),
                           status=status, finished_fill=True, distinct_keys=report.distinct_keys if report else 0,
                           errors=len(report.errors) if report else 0)
        except Exception as error:  # the vectors are stored; say why the audit is not (the fill's own error wins)
            _log.error("embeddings: could not record the run in %s.llm_runs / llm_errors: %s", self.schema,
                       redact(str(error)))
        finally:
            if self.conn is not None:
                self.conn.close()
