"""What a fill needs from its surroundings: the engine's draining log sinks, and which exceptions
mean the database connection broke (worth one reconnect)."""
from __future__ import annotations

import threading

__all__ = ["buffered_sinks", "db_errors"]

_sink_lock = threading.Lock()


def buffered_sinks(engine) -> list:
    """The engine's draining sinks (BufferedSink); one is added if it has none."""
    sinks = getattr(engine, "sinks", None)
    dispatcher = getattr(engine, "log", None)
    if sinks is None:
        sinks = getattr(dispatcher, "sinks", ())
    found = [s for s in sinks if callable(getattr(s, "drain", None))]
    if found or dispatcher is None or not hasattr(dispatcher, "add"):
        return found
    with _sink_lock:
        found = [s for s in dispatcher.sinks if callable(getattr(s, "drain", None))]
        if not found:
            from ..models.logs import BufferedSink
            from .run_totals import spool_dir_of

            sink = BufferedSink(spool_dir=spool_dir_of(engine))  # records on disk until written (call_spool.py)
            dispatcher.add(sink)
            found = [sink]
    return found


_DB_ERRORS: tuple = ()


def db_errors() -> tuple:
    global _DB_ERRORS
    if not _DB_ERRORS:
        try:
            import psycopg2

            _DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
        except ImportError:  # pragma: no cover - psycopg2 comes with dbt-postgres
            _DB_ERRORS = (OSError,)
    return _DB_ERRORS
