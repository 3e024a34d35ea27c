"""Call logs from the engine's buffered sinks to ``llm_calls`` (the rows every total is derived
from, decision 0026), written by the fill on its writer connection.

Drained records are kept until they are written: a broken connection loses none (they go with the
next write, or on the way out), and only then is the sink told, so its spool forgets them
(``logs.BufferedSink.written``). A record without a run (an engine call made outside any fill) is
written without defaults: it is not the run of whichever fill happens to drain the shared sink.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["CallLogDrain"]


class CallLogDrain:
    """Moves call records from ``sinks`` (``connectivity.buffered_sinks``) to ``write(records)``."""

    def __init__(self, sinks: list):
        self.sinks = sinks
        self.unwritten: list[tuple[Any, list]] = []  # (sink, records) drained, not yet in llm_calls

    def drain(self, write: Callable[[list], Any]) -> None:
        for sink in self.sinks:
            logs = sink.drain()
            if logs:
                self.unwritten.append((sink, logs))
        while self.unwritten:
            sink, logs = self.unwritten[0]
            write(logs)
            self.unwritten.pop(0)
            written = getattr(sink, "written", None)
            if callable(written):
                written(len(logs))
