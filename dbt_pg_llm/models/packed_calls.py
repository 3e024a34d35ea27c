"""Row packing behind ``Engine.map_packed``: a group of rows, one packed request, one answer per row.

Packing is a transport detail: each row keeps the cache key it has unpacked (``request_key`` of
its own ModelInput), a cached row is a hit and is not sent, and each paid answer goes through
``ResultCache.get_or_compute`` -- so it is journaled (group commit, the same write-error handling)
before the caller sees it, exactly like an ``Engine.acall`` answer. Sending, the fallback to single
calls, the split of a packed request's cost over its rows and the spend reservations are
``batch.run_batch``'s.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, Iterator

from .batch import BatchInput, run_batch
from .keys import request_key
from .model_io import ModelInput, ModelOutput

if TYPE_CHECKING:
    from .engine import Engine
    from .model import Model

__all__ = ["apacked", "packed_groups"]


def packed_groups(source: Iterator[tuple[Any, ModelInput]], size: int) -> Iterator[tuple[list, list]]:
    """(tags, rows) of ``size`` rows at a time, pulled lazily (a cursor may feed millions of rows)."""
    while True:
        rows = list(itertools.islice(source, size))
        if not rows:
            return
        yield [tag for tag, _ in rows], rows


async def apacked(engine: "Engine", model: "Model", rows: list[tuple[Any, ModelInput]],
                  context: dict | None) -> list[tuple[Any, ModelOutput]]:
    """(tag, output) for every row: hits from the cache, the others from one packed request."""
    cache = engine.cache
    done: list[tuple[Any, ModelOutput]] = []
    misses: list[tuple[Any, ModelInput, str]] = []
    for tag, inp in rows:
        inp = inp.with_defaults(model.config.temperature, model.config.max_tokens)
        key = request_key(model.config, inp)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            engine.record_hit(model, key, hit, context)
            done.append((tag, hit))
        else:
            misses.append((tag, inp, key))
    if not misses:
        return done
    batch = await run_batch(model, BatchInput([inp for _, inp, _ in misses], batch_size=len(misses)),
                            context=context)
    # the group's answers are journaled together, in one group commit: awaited one after another,
    # each waited for a commit of its own (16 rows x commit_delay_s per packed request)
    outputs = await asyncio.gather(*(_journaled(cache, key, output)
                                     for (_, _, key), output in zip(misses, batch.outputs)))
    done.extend((tag, output) for (tag, _, _), output in zip(misses, outputs))
    return done


async def _journaled(cache, key: str, output: ModelOutput) -> ModelOutput:
    """A paid answer once it is journaled (before it is used); a failure as it is."""
    if cache is not None and output.ok:
        return await cache.get_or_compute(key, _returning(output))
    return output


def _returning(output: ModelOutput):
    async def compute() -> ModelOutput:
        return output
    return compute
