"""Provider batch APIs for big backfills: half the price, answers within 24 h (issue 11).

* ``dbt_pg_llm.models.batch_policy.BatchPolicy`` (re-exported): when a column goes through a batch
  (profile ``batch:`` / ``mode='batch'``; a top-level module because ModelConfig holds one);
* ``client``: ``BatchClient`` (the common part: HTTP with tenacity retries, size limits),
  ``BatchInfo`` / ``BatchLine`` (a batch's state / one result line), ``client_for(model config)``;
* ``openai_batches.OpenAIBatchClient``: ``/v1/files`` + ``/v1/batches``, JSONL in and out;
* ``anthropic_batches.AnthropicBatchClient``: ``/v1/messages/batches`` and its results JSONL;
* ``outputs``: a result line -> the engine's ``ModelOutput`` at the batch price.

The Postgres side (recording, collecting, the fill) is in ``dbt_pg_llm.pg.batch_*``.
"""
from ..batch_policy import COLUMN_MODES, BatchPolicy
from .client import BatchClient, BatchInfo, BatchLine, client_for
from .outputs import line_failure, missing_line, output_of_line

__all__ = ["BatchPolicy", "COLUMN_MODES", "BatchClient", "BatchInfo", "BatchLine", "client_for", "line_failure", "missing_line",
           "output_of_line"]
