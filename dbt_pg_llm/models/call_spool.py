"""Call records on local disk as fast as they are emitted, for the runs that die before writing them.

The fill writes ``llm_calls`` from an in-memory buffer (``logs.BufferedSink``) every ~2 s, so a
``kill -9`` (or a process ending while Postgres is down) used to lose the last seconds of paid
requests from the audit while the provider billed them. A ``CallSpool`` appends each record as
one JSON line to a file of this process with a plain ``write`` (no fsync: once ``write`` returns
the kernel has the bytes, which is what survives a killed process; a power cut is the journal's
``sqlite_synchronous`` business, not this). The file is a *segment*: the sink starts a new one
each time it is drained and deletes a segment once every record drained from it is in
``llm_calls`` (``written``), so a live process keeps only the records not yet written.

A later run (``pg.run_totals.replay_spools``) reads the segments of processes of this host that
are gone, inserts the records whose ``call_id`` ``llm_calls`` does not already hold, deletes the
files and settles the runs they belong to.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from datetime import datetime, timezone

__all__ = ["CallSpool", "spool_record", "segment_owner", "orphaned", "SEGMENT_PREFIX"]

SEGMENT_PREFIX = "calls"
_HOST = socket.gethostname().replace("-", "_")


_FIELDS: tuple[str, ...] = ()
# one encoder: json.dumps(default=...) builds a new JSONEncoder per call (a third of the cost)
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def spool_record(log) -> dict:
    """A ModelLog as plain JSON values (the timestamp as ISO text). Field by field, not
    ``dataclasses.asdict``: that deep-copies and cost ~100 us per record on the event loop."""
    global _FIELDS
    if not _FIELDS:
        from dataclasses import fields

        _FIELDS = tuple(f.name for f in fields(log))
    data = {name: getattr(log, name) for name in _FIELDS}
    ts = data.get("timestamp")
    if isinstance(ts, datetime):
        data["timestamp"] = ts.isoformat()
    return data


def segment_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a segment file name, or None if it is not one."""
    parts = name.split("-")
    if len(parts) != 5 or parts[0] != SEGMENT_PREFIX or not parts[4].endswith(".jsonl"):
        return None
    try:
        return parts[1], int(parts[2])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def orphaned(name: str) -> bool:
    """Is ``name`` a segment of a process of this host that is gone (so nobody will write it)?"""
    owner = segment_owner(name)
    return owner is not None and owner[0] == _HOST and owner[1] != os.getpid() and not _alive(owner[1])


class CallSpool:
    """Segments of JSON lines under ``directory`` (created if missing): the open one takes new
    records (a file is created at the first record, so an idle process leaves none); drained ones
    wait until their records are written. Not thread-safe by itself: ``BufferedSink`` calls it
    under its lock."""

    def __init__(self, directory: str):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._serial = 0
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:16] + "-"  # ids unique across processes, a counter within
        # a segment: [path, fd, records appended, records acknowledged, call_ids sent without a record yet]
        self._open: list | None = None
        self._drained: list[list] = []  # oldest first
        self._sent_in: dict[str, list] = {}  # call_id announced -> the segment holding its marker

    def _new_segment(self) -> list:
        self._serial += 1
        path = os.path.join(self.directory, f"{SEGMENT_PREFIX}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
                                            f"{self._serial}.jsonl")
        return [path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), 0, 0, set()]

    def _write(self, data: dict) -> list:
        if self._open is None:
            self._open = self._new_segment()
        os.write(self._open[1], (_encode(data) + "\n").encode("utf-8", "replace"))
        return self._open

    def mark_sent(self, call_id: str, fields: dict) -> None:
        """A request (``fields``: the ModelLog fields naming it) is about to go out. Its segment is
        kept until the request's own record, with the same ``call_id``, has been written: a process
        dying in between leaves the marker, which replay turns into a request of unknown outcome.
        A small line of its own (not a whole ModelLog): it is written for every request."""
        segment = self._write({**fields, "call_id": call_id, "sent": True,
                               "timestamp": datetime.now(timezone.utc).isoformat()})
        segment[4].add(call_id)
        self._sent_in[call_id] = segment

    def append(self, log) -> None:
        if log.call_id is None:
            log.call_id = self._id_prefix + str(next(self._ids))  # a uuid4 each cost 6 us on the loop
        else:
            marked = self._sent_in.pop(log.call_id, None)
            if marked is not None:  # its record follows (and is kept until written): the marker is settled
                marked[4].discard(log.call_id)
        self._write(spool_record(log))[2] += 1

    def rotate(self) -> None:
        """The records appended so far were drained: new ones go to a new segment."""
        if self._open is not None:
            self._drained.append(self._open)
            self._open = None

    def written(self, count: int) -> None:
        """``count`` drained records reached ``llm_calls`` (oldest segments first)."""
        for segment in self._drained:
            take = min(count, segment[2] - segment[3])
            segment[3] += take
            count -= take
            if count <= 0:
                break
        keep = []
        for segment in self._drained:
            if segment[3] >= segment[2] and not segment[4]:
                self._remove(segment)
            else:
                keep.append(segment)
        self._drained = keep

    @staticmethod
    def _remove(segment) -> None:
        try:
            os.close(segment[1])
        finally:
            try:
                os.unlink(segment[0])
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Delete every segment (everything was written, or the caller gives up on it)."""
        for segment in self._drained + ([self._open] if self._open else []):
            self._remove(segment)
        self._open, self._drained, self._sent_in = None, [], {}
