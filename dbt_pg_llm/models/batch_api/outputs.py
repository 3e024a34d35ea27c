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

__all__ = ["output_of_line"]


def output_of_line(line: BatchLine, model: Model, inp: ModelInput, discount: float) -> ModelOutput:
    if line.error_kind is not ErrorKind.NONE or line.body is None:
        error = ModelError(line.error_kind if line.error_kind is not ErrorKind.NONE else ErrorKind.API,
                           line.message or "no answer in the batch", http_status=line.http_status, model=model.name)
        return ModelOutput.failure(error, model=model.name, attempts=1)
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
