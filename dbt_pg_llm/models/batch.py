"""Batch calls: many inputs, outputs in input order, and optional row packing.

``batch_size > 1`` packs that many short prompts that share their parameters into one request
(a numbered JSON array in, a JSON array out). A reply that does not parse to exactly that many valid
items falls back to single calls for the rows whose item was missing or invalid, so packing can
only save requests, never lose rows. Paid is paid: the cost and tokens of a packed request (its
failed attempts included) are split evenly over all its rows, also over the rows whose item was
unusable, which then add the cost of their own single call; the rows' costs sum to what was paid.

Every request, packed or single, is sent by ``Model.acall``, so each reserves its worst case (a
packed one: ``max_tokens`` times its rows, for labels each row's longest label: tokens.py) from the
active spend limit first (spend.py).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from ..errors import ErrorKind, ModelError
from .model_io import ModelInput, ModelOutput, ResponseFormat, TokenUsage
from .tokens import packed_output_tokens_bound

if TYPE_CHECKING:
    from .model import Model

__all__ = ["BatchInput", "BatchOutput", "run_batch", "pack_prompt", "unpack_answer"]


@dataclass
class BatchInput:
    inputs: Sequence[ModelInput]
    parallel: bool = True
    batch_size: int = 1  # > 1: pack this many prompts into one request

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: {self.batch_size!r} must be an integer >= 1 (1 = no packing)")


@dataclass
class BatchOutput:
    outputs: list[ModelOutput] = field(default_factory=list)  # in input order
    failed_count: int = 0
    error: str | None = None  # first error, "kind: message", when any row failed
    packed_requests: int = 0  # requests that carried more than one row

    @property
    def cost_usd(self) -> float:
        """Everything paid for this batch (packed requests, their retries, fallback single calls)."""
        return sum(o.cost_usd for o in self.outputs)


_SHAPES = {"text": "each answer a string", "labels": "each answer exactly one of the labels, as a string",
           "json": "each answer a JSON object matching the schema"}


def pack_prompt(prompts: Sequence[str], fmt: ResponseFormat) -> str:
    items = [{"n": i + 1, "input": p} for i, p in enumerate(prompts)]
    return (f"Answer each of the {len(prompts)} numbered inputs below independently, following the instructions. "
            f"Reply with only a JSON array of exactly {len(prompts)} answers in input order, {_SHAPES[fmt.type]}.\n\n"
            + json.dumps(items, ensure_ascii=False))


def unpack_answer(text: str | None, count: int, fmt: ResponseFormat) -> list[tuple[str, object] | None]:
    """Parse a packed reply into ``count`` validated (text, value) pairs; None where an item is unusable."""
    try:
        items = json.loads((text or "").strip().strip("`").removeprefix("json"))
    except ValueError:
        return [None] * count
    if not isinstance(items, list) or len(items) != count:
        return [None] * count
    results: list[tuple[str, object] | None] = []
    for item in items:
        raw = json.dumps(item, ensure_ascii=False) if fmt.type == "json" else item
        try:
            results.append(fmt.validate(raw) if isinstance(raw, str) else None)
        except ModelError:
            results.append(None)
    return results


async def run_batch(model: "Model", batch: BatchInput, *, context: dict | None = None) -> BatchOutput:
    outputs: list[ModelOutput | None] = [None] * len(batch.inputs)
    packed_requests = 0

    async def single(index: int) -> None:
        outputs[index] = await model.acall(batch.inputs[index], context=context, operation="batch_call")

    async def packed(indexes: list[int]) -> None:
        nonlocal packed_requests
        first = batch.inputs[indexes[0]].with_defaults(model.config.temperature, model.config.max_tokens)
        request = replace(first, prompt=pack_prompt([batch.inputs[i].prompt for i in indexes], first.response_format),
                          max_tokens=packed_output_tokens_bound(model.config, first, len(indexes)),
                          response_format=ResponseFormat.text())
        answer = await model.acall(request, context=context, operation="batch_packed")
        if answer.error_kind is ErrorKind.CLAIM_LOST:  # not sent (lease.py): nor would its rows be one by one
            for index in indexes:
                outputs[index] = answer
            return
        packed_requests += 1
        parsed = unpack_answer(answer.text, len(indexes), first.response_format) if answer.ok else [None] * len(indexes)
        shares = _split(answer.tokens, len(indexes))
        cost_share = answer.cost_usd / len(indexes)
        # the packed request's attempts count on its first row only: the rows' attempts sum to the
        # HTTP requests really sent (the fill reports them as requests)
        sent = {index: answer.attempts if k == 0 else 0 for k, index in enumerate(indexes)}
        for index, item, tokens in zip(indexes, parsed, shares):
            if item is not None:
                outputs[index] = ModelOutput(
                    text=item[0], value=item[1], model=answer.model, latency_ms=answer.latency_ms,
                    tokens=tokens, cost_usd=cost_share, truncated=answer.truncated, attempts=sent[index])
        retry = [(i, tokens) for i, tokens in zip(indexes, shares) if outputs[i] is None]
        await _gather_or_loop([single(i) for i, _ in retry], batch.parallel)
        for index, tokens in retry:  # the packed request was paid for these rows too
            out = outputs[index]
            outputs[index] = replace(out, tokens=out.tokens + tokens, cost_usd=out.cost_usd + cost_share,
                                     attempts=out.attempts + sent[index])

    jobs = []
    if batch.batch_size > 1:
        for group in _groups(batch.inputs, batch.batch_size):
            jobs.append(packed(group) if len(group) > 1 else single(group[0]))
    else:
        jobs = [single(i) for i in range(len(batch.inputs))]
    await _gather_or_loop(jobs, batch.parallel)

    done = [o if o is not None else ModelOutput.failure(ModelError(ErrorKind.INTERNAL, "row was not processed"))
            for o in outputs]
    failed = [o for o in done if not o.ok]
    first_error = f"{failed[0].error_kind.value}: {failed[0].error_message}" if failed else None
    return BatchOutput(outputs=done, failed_count=len(failed), error=first_error, packed_requests=packed_requests)


def _split(tokens: TokenUsage, parts: int) -> list[TokenUsage]:
    """``tokens`` in ``parts`` shares that add up to it exactly (the first rows take the remainders)."""
    shares = [divmod(n, parts) for n in (tokens.prompt, tokens.completion, tokens.cached, tokens.cache_write)]
    return [TokenUsage(*(q + (i < r) for q, r in shares)) for i in range(parts)]


async def _gather_or_loop(coros, parallel: bool) -> None:
    if parallel:
        await asyncio.gather(*coros)
    else:
        for coro in coros:
            await coro


def _groups(inputs: Sequence[ModelInput], size: int) -> list[list[int]]:
    """Group row indexes that share every request parameter but the prompt, ``size`` at a time."""
    by_params: dict[tuple, list[int]] = {}
    for i, inp in enumerate(inputs):
        params = (inp.system_message, inp.temperature, inp.max_tokens, tuple(inp.stop), inp.response_format.type,
                  inp.response_format.labels, json.dumps(inp.response_format.json_schema, sort_keys=True))
        by_params.setdefault(params, []).append(i)
    groups = []
    for indexes in by_params.values():
        groups.extend(indexes[j:j + size] for j in range(0, len(indexes), size))
    return groups
