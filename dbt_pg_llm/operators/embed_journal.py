"""A paid embeddings request journaled as ONE entry, not one per text.

Per-text journal entries (``ResultCache.put_many``: a ModelOutput serialised and a diskcache ``set``
per key) cost ~29 us a text, ~2.8 s of a 100,000-text fill (decision 0035). Here a request's keys
and the provider's answer AS RECEIVED (the response body's bytes: nothing re-encoded, a JSON dump
of the parsed vectors cost ~9 ms a request) are one value in a small diskcache of its own,
``<journal>/embed-requests`` (one SQLite row and one value file per request), written as soon as
the answer is parsed, before the vectors go to Postgres, and deleted once their COPY has committed:
a durable queue of paid-but-unwritten requests, empty between fills.

Crash recovery keeps its per-key form: ``absorb`` (at the start of a fill) turns each request left
there by a process killed between its journal write and its COPY (or between the COPY and the
delete) into the ResultCache's usual per-key entries and deletes it; ``embed._from_journal`` then
finds them key by key, as before. A request of a run still in flight may be absorbed too: its
vectors are then journaled twice, never lost, and its own delete finds nothing.

Without a journal directory (an in-memory ResultCache) requests are journaled per key as before.
"""
from __future__ import annotations

import json
import os
import uuid

from ..models.model_io import ModelOutput, TokenUsage
from ..pg.vectors import parse_embeddings

__all__ = ["RequestJournal", "PENDING_DIR"]

PENDING_DIR = "embed-requests"


class RequestJournal:
    """The paid-but-unwritten embeddings requests of the engine's ResultCache ``cache`` (or None)."""

    def __init__(self, cache):
        self.cache = cache
        directory = getattr(getattr(cache, "backend", None), "directory", None)
        self._pending = None
        if directory is not None:
            import diskcache

            # the same settings as DiskJournal: nothing evicted, SQLite's memory bounded, no cull
            self._pending = diskcache.Cache(os.path.join(str(directory), PENDING_DIR), eviction_policy="none",
                                            sqlite_mmap_size=0, sqlite_cache_size=256, cull_limit=0)

    def put(self, keys: list[str], body: bytes, vectors: list[str], model: str, tokens_each: int,
            cost_each: float) -> str | None:
        """Journal one request: its keys and the answer's ``body`` as received (``vectors``: the
        base64 vectors parsed from it, in ``keys``' order, used only without a journal directory);
        returns its id for ``done``."""
        if self.cache is None:
            return None
        if self._pending is None:
            self.cache.put_many((key, ModelOutput(text=vec, model=model, tokens=TokenUsage(tokens_each, 0),
                                                  cost_usd=cost_each)) for key, vec in zip(keys, vectors))
            return None
        request_id = uuid.uuid4().hex
        self._pending.set(request_id, {"keys": keys, "body": bytes(body), "model": model, "tokens_each": tokens_each,
                                       "cost_each": cost_each})
        return request_id

    def done(self, request_id: str | None) -> None:
        """The request's vectors are committed in Postgres: its journal entry is no longer needed."""
        if request_id is not None and self._pending is not None:
            self._pending.delete(request_id)

    def absorb(self) -> int:
        """Turn every request left here into per-key ResultCache entries (what ``_from_journal``
        reads), then delete it; returns how many keys. Usually none are left: one cheap lookup."""
        if self._pending is None:
            return 0
        moved = 0
        for request_id in list(self._pending):
            value = self._pending.get(request_id)
            if value is None:  # its own process deleted it meanwhile
                continue
            entry = _entry(value)
            moved += self.cache.put_many(
                (key, ModelOutput(text=vec, model=entry["model"], tokens=TokenUsage(entry["tokens_each"], 0),
                                  cost_usd=entry["cost_each"])) for key, vec in zip(entry["keys"], entry["vectors"]))
            self._pending.delete(request_id)
        return moved

    def __len__(self) -> int:
        return len(self._pending) if self._pending is not None else 0

    def close(self) -> None:
        if self._pending is not None:
            self._pending.close()


def _entry(value) -> dict:
    """A journaled request as {keys, vectors, model, tokens_each, cost_each}: the answer's body parsed
    again (an entry of an earlier version, JSON text with the vectors, is read as it is)."""
    if isinstance(value, str):
        return json.loads(value)
    entry = dict(value)
    entry["vectors"] = parse_embeddings(entry.pop("body"), len(entry["keys"]))["vectors"]
    return entry
