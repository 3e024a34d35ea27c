"""How a fill ends: the ``llm.max_error_rate`` verdict, a broken connection, and the truth about
answers it could not write.

Plain functions over a ``FillReport`` and the engine's cache, used by ``fill.ColumnFill``.
"""
from __future__ import annotations

from ..errors import ModelError, PgLlmError, redact
from .report import FillReport

__all__ = ["too_many_errors", "error_rate_exceeded", "first_error_fails", "where_kept", "connection_broke"]


def too_many_errors(report: FillReport, max_error_rate: float | None) -> bool:
    """More than ``max_error_rate`` of the distinct keys failed or were skipped (e.g. budget)."""
    return (max_error_rate is not None and report.errors > 0 and report.distinct_keys > 0
            and report.errors / report.distinct_keys > max_error_rate)


def error_rate_exceeded(report: FillReport, max_error_rate: float, schema: str, answers_written: int) -> ModelError:
    """The error that fails the model: the counts, the share, the setting, and the first error."""
    return _model_failed(
        report,
        f"{report.errors} of {report.distinct_keys} distinct key(s) ({report.errors / report.distinct_keys:.0%}) "
        f"failed or were not requested, more than llm.max_error_rate ({max_error_rate:g})",
        f"The {answers_written} answer(s) received were kept in {schema}.llm_results and the failed keys are "
        "retried on the next run.")


def first_error_fails(report: FillReport, schema: str, answers_written: int) -> ModelError:
    """The error that fails the model under ``on_error='fail'``: where the fill stopped, the first
    error, and where the answers already paid for are."""
    return _model_failed(
        report,
        f"{report.errors} key(s) failed and on_error is 'fail', so the fill stopped after {report.requests_done} "
        f"of {report.requests_total} requests",
        f"The {answers_written} answer(s) already received were kept in {schema}.llm_results "
        "(set on_error: 'null' to keep going).")


def _model_failed(report: FillReport, what: str, kept: str) -> ModelError:
    """``<node>: model '<model>': <what>; first error, for key <key>: <kind>: <message>. <kept>``"""
    err = report.first_error
    who = f"{report.node_id}: " if report.node_id else ""
    return ModelError(err.kind, f"{who}model '{report.model}': {what}; first error, for key {err.key[:16]}: "
                                f"{err.kind}: {err.message}. {kept}", model=report.model)


def where_kept(engine, keys: list[str]) -> str:
    """What happens to paid answers that could not be written to llm_results: checked, not assumed.

    They are "kept in the engine's journal" only if the journal on disk really holds them."""
    cache = getattr(engine, "cache", None)
    kept = len(cache.holds(keys)) if cache is not None and hasattr(cache, "holds") else 0
    if kept == len(keys):
        return "they are kept in the engine's journal and the next run reuses them without paying"
    why = (str(cache.write_error) if getattr(cache, "write_error", None) is not None else
           "the engine has no journal on disk (llm.journal_dir)")
    return (f"{kept} of them are kept in the engine's journal; {len(keys) - kept} paid answer(s) are kept "
            f"nowhere and will be requested (and paid) again: {why}")


def connection_broke(exc: BaseException, model: str, schema: str, engine, unwritten: list[str]) -> PgLlmError:
    """The error of a fill whose database connection broke: the driver's words, and what became of
    the paid answers (``unwritten``: the keys received but not in llm_results)."""
    kept = (f"{len(unwritten)} paid answer(s) could not be written to {schema}.llm_results: "
            f"{where_kept(engine, unwritten)}" if unwritten else
            f"the answers received were written to {schema}.llm_results")
    return PgLlmError(f"the database connection broke while filling with model '{model}': "
                      f"{' '.join(redact(str(exc)).split())}; {kept}")
