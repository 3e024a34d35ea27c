"""One audit record per model call attempt (ModelLog) and where those records go (sinks).

Sinks are called on the event loop thread, in the middle of thousands of concurrent calls, so
``emit`` must never block or raise: ``BufferedSink`` only appends to a deque (a Postgres writer on
another thread drains it in batches), ``LogDispatcher`` swallows and counts sink failures so a
broken sink can never fail a model call. Error messages are redacted before they leave the engine.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol, runtime_checkable

from ..errors import ErrorKind, redact

__all__ = ["ModelLog", "LogSink", "MemorySink", "LoggingSink", "BufferedSink", "LogDispatcher"]


# ids of requests announced by LogDispatcher.sending: unique across processes, a counter within
_SENT_PREFIX = uuid.uuid4().hex[:16] + "-s"
_sent_ids = itertools.count()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(kw_only=True)
class ModelLog:
    """One call attempt (or cache hit). ``error_kind`` is the ErrorKind value ("none" on success);
    ``context`` carries where the call came from, e.g. ``{"run_id": ..., "node_id": ...}``.
    Keyword-only: with 14 fields, positional construction is a bug waiting to happen."""

    timestamp: datetime = field(default_factory=_utcnow)
    model: str
    operation: str = "complete"
    input_hash: str | None = None
    attempt: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it (Anthropic)
    prompt_cache_saved_usd: float = 0.0  # what the provider's prompt cache saved (pricing.py)
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False
    error_kind: str = ErrorKind.NONE.value
    error_message: str | None = None
    http_status: int | None = None
    context: dict = field(default_factory=dict)
    call_id: str | None = None  # set by a spooling sink: what makes a replayed record unique (call_spool.py)

    def __post_init__(self):
        if isinstance(self.error_kind, ErrorKind):
            self.error_kind = self.error_kind.value
        if self.error_message:
            self.error_message = redact(self.error_message)

    @property
    def ok(self) -> bool:
        return self.error_kind == ErrorKind.NONE.value

    @classmethod
    def from_output(cls, output: Any, *, model: str | None = None, operation: str = "complete",
                    input_hash: str | None = None, http_status: int | None = None,
                    context: dict | None = None) -> "ModelLog":
        """Build the record of a ModelOutput (``attempt`` = the number of attempts it took)."""
        return cls(
            model=model or output.model or "",
            operation=operation,
            input_hash=input_hash,
            attempt=output.attempts,
            prompt_tokens=output.tokens.prompt,
            completion_tokens=output.tokens.completion,
            cached_tokens=output.tokens.cached,
            cache_write_tokens=output.tokens.cache_write,
            latency_ms=output.latency_ms,
            cost_usd=output.cost_usd,
            cached=output.cached,
            error_kind=str(output.error_kind),
            error_message=output.error_message,
            http_status=http_status,
            context=dict(context or {}),
        )

    def to_dict(self) -> dict:
        """Plain values (``timestamp`` stays a timezone-aware datetime, as database drivers want)."""
        out = asdict(self)
        out["context"] = dict(self.context)
        return out


@runtime_checkable
class LogSink(Protocol):
    def emit(self, log: ModelLog) -> None:
        """Take one record. Must return quickly and should not raise (it runs on the event loop)."""
        ...


class MemorySink:
    """Keeps every record in ``logs`` (tests, notebooks)."""

    def __init__(self):
        self.logs: list[ModelLog] = []

    def emit(self, log: ModelLog) -> None:
        self.logs.append(log)

    def __len__(self) -> int:
        return len(self.logs)


class LoggingSink:
    """One line per record on a Python logger: DEBUG for successes, WARNING for errors."""

    def __init__(self, logger_name: str = "dbt_pg_llm"):
        self.logger = logging.getLogger(logger_name)

    def emit(self, log: ModelLog) -> None:
        level = logging.DEBUG if log.ok else logging.WARNING
        if not self.logger.isEnabledFor(level):
            return  # formatting costs more than the check: skip it when nobody listens
        parts = [
            f"model={log.model}",
            f"op={log.operation}",
            f"attempt={log.attempt}",
            f"latency_ms={log.latency_ms:.1f}",
            f"tokens={log.prompt_tokens}+{log.completion_tokens}",
            f"cost_usd={log.cost_usd:.6f}",
        ]
        if log.cached:
            parts.append("cached")
        if log.input_hash:
            parts.append(f"key={log.input_hash[:16]}")
        if log.context:
            parts.extend(f"{k}={v}" for k, v in sorted(log.context.items(), key=lambda kv: str(kv[0])))
        if log.ok:
            self.logger.debug("llm call ok %s", " ".join(parts))
        else:
            status = f" http={log.http_status}" if log.http_status is not None else ""
            message = redact(log.error_message or "")
            self.logger.warning("llm call failed %s error=%s%s: %s", " ".join(parts), log.error_kind, status, message)


class BufferedSink:
    """A bounded, thread-safe FIFO: the loop emits, another thread ``drain()``s.

    When full, new records are dropped (and counted in ``dropped``) rather than blocking the loop
    or growing without bound; what is already buffered keeps its order.
    """

    def __init__(self, max_items: int = 1_000_000, spool_dir: str | None = None):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self.dropped = 0
        self._items: collections.deque[ModelLog] = collections.deque()
        self._lock = threading.Lock()
        # spool_dir: each record is also on local disk until the drainer says it is written, so a
        # killed process's paid requests can still reach llm_calls (call_spool.py)
        self.spool = None
        if spool_dir is not None:
            from .call_spool import CallSpool

            self.spool = CallSpool(spool_dir)

    def emit(self, log: ModelLog) -> None:
        with self._lock:
            if len(self._items) >= self.max_items:
                self.dropped += 1
                return
            if self.spool is not None:
                self.spool.append(log)
            self._items.append(log)

    def drain(self, max_items: int | None = None) -> list[ModelLog]:
        """Remove and return up to ``max_items`` records (all when None), oldest first. With a
        spool, call ``written(len(records))`` once they are stored."""
        with self._lock:
            n = len(self._items) if max_items is None else min(max_items, len(self._items))
            popleft = self._items.popleft
            out = [popleft() for _ in range(n)]
            if self.spool is not None and out:
                self.spool.rotate()
            return out

    def written(self, count: int) -> None:
        """``count`` drained records are stored: the spool forgets them."""
        if self.spool is not None:
            with self._lock:
                self.spool.written(count)

    def sending(self, call_id: str, fields: dict) -> None:
        """A request is about to go out (``fields``: ModelLog fields naming it; its record follows
        with the same ``call_id``): on the spool only, so a process that dies waiting counts it."""
        if self.spool is not None:
            with self._lock:
                self.spool.mark_sent(call_id, fields)

    def __len__(self) -> int:
        return len(self._items)


class LogDispatcher:
    """Sends each record to every sink; a failing sink is counted and logged once, never raised."""

    def __init__(self, sinks: Iterable[LogSink] = ()):
        self.sinks: list[LogSink] = list(sinks)
        self.sink_errors = 0
        self.errors_by_sink: dict[int, int] = {}

    def add(self, sink: LogSink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: LogSink) -> None:
        """Stop sending to ``sink``. The list is replaced, not changed in place: an ``emit`` iterating
        it on the loop thread meanwhile still reaches every other sink."""
        self.sinks = [s for s in self.sinks if s is not sink]

    def emit(self, log: ModelLog) -> None:
        for sink in self.sinks:
            try:
                sink.emit(log)
            except Exception as exc:  # a sink must never break a model call
                self._failed(sink, exc)

    def sending(self, **fields) -> str | None:
        """Tell the sinks that keep a spool (``sending``) that a request is about to go out; returns
        the ``call_id`` its record must carry (None when no sink spools: nothing to match)."""
        spooling = [s for s in self.sinks if callable(getattr(s, "sending", None))]
        if not spooling:
            return None
        call_id = f"{_SENT_PREFIX}{next(_sent_ids)}"
        for sink in spooling:
            try:
                sink.sending(call_id, fields)
            except Exception as exc:  # a sink must never break a model call
                self._failed(sink, exc)
        return call_id

    def _failed(self, sink, exc: Exception) -> None:
        self.sink_errors += 1
        first = self.errors_by_sink.get(id(sink), 0) == 0
        self.errors_by_sink[id(sink)] = self.errors_by_sink.get(id(sink), 0) + 1
        if first:
            logging.getLogger("dbt_pg_llm").error(
                "log sink %s failed (further failures of this sink are only counted): %s",
                type(sink).__name__, redact(str(exc)))
