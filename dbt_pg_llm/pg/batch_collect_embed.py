"""Collecting an ended embeddings batch (``/v1/embeddings`` lines, submitted by
``operators/embed_batch.py``): ``BatchCollector`` hands each such batch here. The vectors go to
``llm_embeddings`` (``vectors.store_vectors``), not ``llm_results``; the journal first, then keys and
``llm_calls`` in one transaction, dead letters, ``llm_runs``, the batch closed."""
from __future__ import annotations

import dataclasses

from ..errors import ErrorKind, ModelError, redact
from ..models.batch_api import BatchClient, line_failure, missing_line
from ..models.model_io import ModelOutput, TokenUsage
from ..models.pricing import cost_usd
from . import batch_store as store
from .migrations import quote_ident
from .vectors import NONFINITE_MESSAGE, store_vectors, vector_to_b64
from .writers import ErrorRow, record_run, resolve_errors, write_errors

__all__ = ["collect_embed_batch", "is_embed_batch"]

def is_embed_batch(spec: dict | None) -> bool:
    """Whether an ``llm_batches.spec`` is an embeddings batch (collected by ``collect_embed_batch``)."""
    return isinstance(spec, dict) and spec.get("kind") == "embed"


def _output(line, config, model_name: str, discount: float) -> ModelOutput:
    failed = line_failure(line, model_name)
    if failed is not None:
        return failed
    try:
        vec = line.body["data"][0]["embedding"]
        tokens = int((line.body.get("usage") or {}).get("prompt_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return ModelOutput.failure(ModelError(ErrorKind.API, f"unexpected embeddings answer in batch ({exc})",
                                              model=model_name), model=model_name)
    usage = TokenUsage(tokens, 0)
    return ModelOutput(text=vec if isinstance(vec, str) else vector_to_b64(vec), model=model_name, tokens=usage,
                       cost_usd=cost_usd(config, usage) * discount, attempts=1)


def collect_embed_batch(engine, conn, schema: str, run, row, client: BatchClient, info, rep) -> None:
    """An ended embeddings batch (``BatchCollector._apply`` hands it here): journal, llm_embeddings,
    then keys + llm_calls in one transaction, dead letters, llm_runs, closed."""
    config = engine.model(row.model).config
    column = (row.spec or {}).get("name")
    pending = store.pending_keys(conn, schema, row.batch_uid)
    outcomes: list[tuple[str, ModelOutput]] = [(line.custom_id, _output(line, config, row.model, row.discount))
                                               for line in client.results(info) if line.custom_id in pending]
    seen = {c for c, _ in outcomes}
    outcomes += [(c, missing_line(info.status, info.id, row.model, "this text", "embedded"))
                 for c in pending.keys() - seen]
    ok = [(pending[c], o) for c, o in outcomes if o.ok]
    cache = getattr(engine, "cache", None)
    if cache is not None and ok:  # journal first: paid vectors survive whatever happens below
        cache.put_many(ok)
    rejected = set(store_vectors(conn, quote_ident(schema), [(k, o.text, o.tokens.prompt) for k, o in ok], row.model,
                                 run_id=row.run_id))
    if rejected:  # paid, but NaN or infinity: failed rows (their tokens and cost stay on the books)
        outcomes = [(c, dataclasses.replace(o, text=None, error_kind=ErrorKind.INVALID_OUTPUT,
                                            error_message=NONFINITE_MESSAGE)
                     if pending[c] in rejected else o) for c, o in outcomes]
    payer = row.run_id or run.run_id  # the submitting run reserved these lines on its cap
    applied = store.apply_answers(conn, schema, row.batch_uid, outcomes, model=row.model, operation="embed",
                                  run_id=payer, node_id=row.node_id, column_name=column)
    ok_keys = [k for k, o in applied if o.ok]
    errors = [ErrorRow(key=k, node_id=row.node_id or "", model=row.model, error_kind=str(o.error_kind),
                       message=redact(o.error_message or "")[:1000], run_id=run.run_id, column_name=column)
              for k, o in applied if not o.ok]
    resolve_errors(conn, schema, ok_keys)
    write_errors(conn, schema, errors)
    record_run(conn, schema, run.run_id, target=getattr(run, "target", None), ended=False, errors=len(errors))
    if payer != run.run_id:
        record_run(conn, schema, payer, ended=False)
    store.close_batch(conn, schema, row.batch_uid, info.status)
    rep.collected.append(f"{info.id} ({row.model}, embeddings, {len(ok_keys)} embedded, {len(errors)} failed, "
                         f"{info.status})")
    rep.answered += len(ok_keys)
    rep.failed += len(errors)
    rep.cost_usd += sum(o.cost_usd for _, o in applied)
