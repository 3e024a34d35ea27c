"""What the adapter shares across dbt threads and in-process invocations (dbtRunner): one Engine
per llm block, and what dbt is doing now (its command, its invocation id), which decides whether a
model's requests are paid for."""
from __future__ import annotations

import atexit
import threading
from typing import Any, Dict, Hashable, Optional

from dbt_common.exceptions import DbtRuntimeError

from dbt.adapters.pg_llm.connections import PgLlmCredentials

__all__ = ["EXECUTING_COMMANDS", "PREVIEW_COMMANDS", "close_engines", "dbt_command", "engine_if_built",
           "first_time", "get_engine", "invocation_id", "really_executing"]

# Commands that really execute models. compile / show / docs generate also render models with
# execute=True, so `execute` alone is not enough to decide to pay for requests.
EXECUTING_COMMANDS = frozenset({"run", "build", "retry"})
# Commands that render the join of an LLM model for the user to look at, without filling it.
PREVIEW_COMMANDS = frozenset({"show", "compile"})

# One Engine per process and per llm block, shared by every dbt thread and by successive in-process
# invocations: its journal, HTTP pools and event loop outlive an adapter instance.
_ENGINES: Dict[str, Any] = {}
_LOCK = threading.Lock()
_DONE: set = set()  # (what, key) pairs already done in this process: see first_time()


def get_engine(credentials: PgLlmCredentials):
    """The process-wide Engine for these credentials' llm block (built on first use, thread-safe).
    On first use dbt's parsed project is also frozen out of the garbage collector's scans (gc_policy.py)."""
    settings = credentials.llm_settings()
    key = settings.identity()
    engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            from dbt_pg_llm.errors import PgLlmError
            from dbt_pg_llm.models.gc_policy import freeze_long_lived_heap
            from dbt_pg_llm.models.settings import build_engine

            try:
                engine = build_engine(settings)
            except PgLlmError as exc:  # e.g. the journal cannot be opened: name llm.journal_dir
                raise DbtRuntimeError(f"pg_llm: {exc}") from None
            _ENGINES[key] = engine
            freeze_long_lived_heap()
    return engine


def engine_if_built(settings) -> Optional[Any]:
    """The Engine of this llm block if this process built one (no request made: None)."""
    return _ENGINES.get(settings.identity())


def close_engines() -> None:
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        try:
            engine.close()
        except Exception:  # closing at exit must never mask the real outcome
            pass


atexit.register(close_engines)


def first_time(what: str, key: Hashable) -> bool:
    """True once per process for (what, key), thread-safe: e.g. retention once per invocation and
    audit schema, the "LLM columns stay empty" note once per invocation."""
    with _LOCK:
        if (what, key) in _DONE:
            return False
        _DONE.add((what, key))
        return True


def dbt_command() -> Optional[str]:
    """The dbt command being run (run, build, show, compile, ...), or None if unknown."""
    try:
        from dbt.flags import get_flags  # dbt-core; an adapter normally avoids it, but it is the truth

        return getattr(get_flags(), "WHICH", None)
    except Exception:
        return None


def really_executing() -> bool:
    """True when dbt is running models for real (run / build / retry), not compiling or showing them."""
    return dbt_command() in EXECUTING_COMMANDS


def invocation_id() -> str:
    try:
        from dbt_common.invocation import get_invocation_id

        return get_invocation_id()
    except Exception:
        return "unknown"
