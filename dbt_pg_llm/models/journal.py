"""Journals of paid answers: where ``ResultCache`` keeps them, and the form they are kept in.

An entry is a plain JSON-able dict (``CacheEntry.to_dict``) so a journal can be read by anything,
replayed into Postgres, and survives upgrades of this package (no pickle). Backends:
``MemoryBackend`` (a dict) and ``DiskJournal`` (diskcache/SQLite on disk: every paid output is
written there before it is used, so a crash after the API answered loses nothing, and several
processes can share it). ``journal_stats`` / ``prune_journal`` operate one (``python -m dbt_pg_llm
journal``); ``JournalError`` says, in words a user can act on, why one cannot be written.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from ..errors import PgLlmError, redact
from .model_io import ModelOutput, TokenUsage

__all__ = ["CacheEntry", "CacheBackend", "DiskJournal", "JournalError", "MemoryBackend", "journal_problem",
           "journal_stats", "prune_journal"]


class JournalError(PgLlmError):
    """The journal cannot be opened or written (disk full, read-only, permissions): paid answers
    are no longer protected by it. ``directory`` is where it lives (``llm.journal_dir``)."""

    def __init__(self, directory: str | None, cause: BaseException, doing: str = "write paid answers to"):
        self.directory = directory
        self.cause = cause
        where = f"the journal at {directory}" if directory else "the result cache"
        super().__init__(f"could not {doing} {where} (llm.journal_dir): {journal_problem(cause, directory)}")


def journal_problem(exc: BaseException, directory: str | None = None) -> str:
    """What is wrong with the journal's disk, in words a user can act on."""
    import errno

    text = redact(str(exc)).strip() or type(exc).__name__
    number = getattr(exc, "errno", None)
    lowered = text.lower()
    if directory and os.path.isdir(directory) and not os.access(directory, os.W_OK):
        lowered += " permission"
    if number in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in lowered or "no space" in lowered:
        return (f"{text}: the disk is full; free space there, or set llm.journal_dir to a directory on a "
                "disk with room")
    if number in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in lowered or "read-only" in lowered \
            or "permission" in lowered:
        return (f"{text}: the directory is not writable; fix its permissions, or set llm.journal_dir to a "
                "writable directory")
    return f"{text}; check that llm.journal_dir is a writable directory with free space"


@dataclass(frozen=True)
class CacheEntry:
    output: ModelOutput  # as a hit: cached=True, cost 0, latency 0
    created_at: float  # epoch seconds (the cache's clock)
    expires_at: float | None
    valid: bool
    original_cost_usd: float

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @staticmethod
    def serialize(output: ModelOutput, created_at: float, expires_at: float | None, valid: bool = True) -> dict:
        return {
            "text": output.text,
            "value": output.value,
            "confidence": output.confidence,
            "prompt_tokens": output.tokens.prompt,
            "completion_tokens": output.tokens.completion,
            "truncated": output.truncated,
            "model": output.model,
            "cost_usd": output.cost_usd,
            "created_at": created_at,
            "expires_at": expires_at,
            "valid": valid,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CacheEntry":
        output = ModelOutput(
            text=data.get("text"), value=data.get("value"), confidence=data.get("confidence"),
            tokens=TokenUsage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0)),
            truncated=bool(data.get("truncated", False)), model=data.get("model"),
            latency_ms=0.0, cost_usd=0.0, cached=True, attempts=0,
            saved_cost_usd=float(data.get("cost_usd") or 0.0),
        )
        return cls(output, float(data.get("created_at") or 0.0), data.get("expires_at"),
                   bool(data.get("valid", True)), float(data.get("cost_usd") or 0.0))

    def to_dict(self) -> dict:
        data = self.serialize(self.output, self.created_at, self.expires_at, self.valid)
        data["cost_usd"] = self.original_cost_usd
        return data


class CacheBackend(Protocol):
    def get(self, key: str) -> dict | None: ...
    def set(self, key: str, entry: dict) -> None: ...
    def set_many(self, items: list[tuple[str, dict]]) -> None: ...
    def delete(self, key: str) -> bool: ...
    def keys(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...


class MemoryBackend:
    """Entries in a dict (one process, gone at exit), kept as JSON text like the journal: the same
    contract everywhere, and a caller mutating a returned JSON value cannot change the cache."""

    def __init__(self):
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        text = self._data.get(key)
        return json.loads(text) if text is not None else None

    def set(self, key: str, entry: dict) -> None:
        text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._data[key] = text

    def set_many(self, items: list[tuple[str, dict]]) -> None:
        for key, entry in items:
            self.set(key, entry)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass


class DiskJournal:
    """Entries as JSON text in a ``diskcache.Cache`` (SQLite, WAL) under ``directory``.

    diskcache defaults are kept except eviction, which is switched off: the default policy
    ("least-recently-stored" beyond 1 GB) would silently delete paid answers; and SQLite's memory,
    bounded (no mmap, a 4 MB page cache) so that RSS does not grow with the journal. SQLite's WAL
    with synchronous=NORMAL makes each ``set`` durable against a crash of this process (not against a
    power cut, which would need synchronous=FULL: pass ``sqlite_synchronous=2``).
    """

    def __init__(self, directory: str, **settings: Any):
        import diskcache  # lazily: MemoryBackend users never pay for it

        settings.setdefault("eviction_policy", "none")
        # SQLite's memory otherwise grows with the journal up to diskcache's defaults: a 64 MB mmap
        # of the file plus a 32 MB page cache per connection (diskcache opens one per thread), ~1 kB
        # of the dbt process's peak RSS per journaled answer (+46 MB at 50,000). Without the mmap
        # and with a 4 MB cache, lookups and writes cost the same CPU (the OS still caches the file).
        settings.setdefault("sqlite_mmap_size", 0)
        settings.setdefault("sqlite_cache_size", 1024)  # pages of 4 kB
        # diskcache's own expiry is never used (entries carry expires_at), so its cull -- a SELECT
        # for expired rows on every set -- finds nothing and costs a statement per paid answer.
        settings.setdefault("cull_limit", 0)
        self.directory = str(directory)
        self._cache = diskcache.Cache(self.directory, **settings)

    def get(self, key: str) -> dict | None:
        text = self._cache.get(key)
        return json.loads(text) if text is not None else None

    def set(self, key: str, entry: dict) -> None:
        self._cache.set(key, json.dumps(entry, ensure_ascii=False, separators=(",", ":")))

    def set_many(self, items: list[tuple[str, dict]]) -> None:
        """One SQLite transaction for many entries: a commit costs far more than a row."""
        with self._cache.transact():
            for key, entry in items:
                self.set(key, entry)

    def stored(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` with an entry, one indexed query per 900 keys on a read-only connection
        (diskcache has no bulk lookup; a ``get`` a key cost ~9 us, ~0.9 s per 100,000 misses)."""
        import sqlite3

        import diskcache

        found: set[str] = set()
        try:
            con = sqlite3.connect(f"file:{os.path.join(self.directory, diskcache.core.DBNAME)}?mode=ro", uri=True)
            try:
                for i in range(0, len(keys), 900):
                    chunk = keys[i:i + 900]
                    found.update(k for (k,) in con.execute(
                        f"select key from Cache where raw = 1 and key in ({','.join('?' * len(chunk))})", chunk))
            finally:
                con.close()
        except sqlite3.Error:  # diskcache's file laid out otherwise: key by key, as ``get`` reads it
            return {k for k in keys if self._cache.get(k) is not None}
        return found

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(key))

    def keys(self) -> Iterator[str]:
        """Every stored key (for replay into the database); iterates without loading values."""
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        """Bytes the journal takes on disk (diskcache's estimate: database plus value files)."""
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> "DiskJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- operating a journal (python -m dbt_pg_llm journal) --------------------------------------------
def _entries(backend: CacheBackend) -> Iterator[tuple[str, CacheEntry]]:
    for key in backend.keys():
        data = backend.get(key)
        if data is not None:  # None: deleted meanwhile
            yield key, CacheEntry.from_dict(data)


def journal_stats(backend: CacheBackend, now: float | None = None) -> dict:
    """Entries (valid / invalid / expired), bytes on disk (a DiskJournal's ``volume``) and the oldest
    and newest ``created_at`` (epoch seconds, None when empty). Reads every entry."""
    now = time.time() if now is None else now
    counts = {"entries": 0, "valid": 0, "invalid": 0, "expired": 0}
    oldest = newest = None
    for _, entry in _entries(backend):
        counts["entries"] += 1
        state = "invalid" if not entry.valid else "expired" if entry.expired(now) else "valid"
        counts[state] += 1
        oldest = entry.created_at if oldest is None else min(oldest, entry.created_at)
        newest = entry.created_at if newest is None else max(newest, entry.created_at)
    volume = getattr(backend, "volume", None)
    return {**counts, "bytes": volume() if volume is not None else None, "oldest": oldest, "newest": newest}


def prune_journal(backend: CacheBackend, now: float | None = None, older_than_s: float | None = None) -> int:
    """Delete the entries that can never be served again (invalidated or expired) and, with
    ``older_than_s``, those created more than that many seconds ago (their answers stay in
    ``llm_results``; the journal only protects answers not written there yet). Returns how many."""
    now = time.time() if now is None else now
    removed = 0
    for key, entry in _entries(backend):
        old = older_than_s is not None and entry.created_at < now - older_than_s
        if (not entry.valid or entry.expired(now) or old) and backend.delete(key):
            removed += 1
    return removed
