"""A batch result line -> the engine's ``ModelOutput``, validated and priced like a normal answer.

A succeeded line is parsed by the model's provider (``parse_body``: the body is what the normal
endpoint returns) and checked against the request's response format (``Model.output_of``): a
label outside the list is an INVALID_OUTPUT failure here too, but its tokens were paid, so the
failure carries them. Cost = the model's list price x the batch discount.
"""
from __future__ import annotations

from ...errors import ErrorKind, ModelError
from ..model import Model
from ..model_io import ModelInput, ModelOutput
from .client import BatchLine

__all__ = ["line_failure", "missing_line", "output_of_line"]


def line_failure(line: BatchLine, model_name: str) -> ModelOutput | None:
    """The failure of a line the provider answered with an error or without a body (billed as one
    attempt); None for a line with an answer."""
    if line.error_kind is ErrorKind.NONE and line.body is not None:
        return None
    error = ModelError(line.error_kind if line.error_kind is not ErrorKind.NONE else ErrorKind.API,
                       line.message or "no answer in the batch", http_status=line.http_status, model=model_name)
    return ModelOutput.failure(error, model=model_name, attempts=1)


def missing_line(status: str, batch_id: str, model_name: str, subject: str = "this request",
                 done: str = "processed") -> ModelOutput:
    """The failure of a request that the ended batch (``status``: expired, cancelled, failed, ...)
    has no line for; ``subject`` / ``done`` word it ("this text" / "embedded")."""
    kind, why = {"expired": (ErrorKind.TIMEOUT, f"the batch expired (24 h window) before {subject} was {done}"),
                 "cancelled": (ErrorKind.API, f"the batch was cancelled before {subject} was {done}"),
                 "failed": (ErrorKind.INVALID_INPUT, "the provider rejected the batch")}.get(
        status, (ErrorKind.API, f"the batch ended without a result for {subject}"))
    return ModelOutput.failure(ModelError(kind, f"in batch {batch_id}: {why}", model=model_name), model=model_name)


def output_of_line(line: BatchLine, model: Model, inp: ModelInput, discount: float) -> ModelOutput:
    failed = line_failure(line, model.name)
    if failed is not None:
        return failed
    try:
        # what the request used (structured-output schema, ...) depends on its response format only
        _, used = model.provider.build_body(inp.with_defaults(model.config.temperature, model.config.max_tokens))
        result = model.provider.parse_body(line.body, 200, used)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        error = ModelError(ErrorKind.API, f"unexpected answer shape in batch ({type(exc).__name__}: {exc})",
                           model=model.name)
        return ModelOutput.failure(error, model=model.name)
    tokens = result.tokens  # a batch line reports prompt-cache reads / writes like a normal answer
    cost = model.cost_of(tokens) * discount
    try:
        output = model.output_of(result, inp)
    except ModelError as error:
        output = ModelOutput.failure(error, model=model.name)
    output.tokens, output.cost_usd, output.attempts = tokens, cost, 1
    return output
