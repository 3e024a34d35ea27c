"""The failures a collected batch gives its requests (models/batch_api/outputs.py), shared by the
chat and the embeddings collectors: a line answered with an error, and a request with no line."""
from dbt_pg_llm.errors import ErrorKind
from dbt_pg_llm.models.batch_api import BatchLine, line_failure, missing_line


def test_a_line_with_an_answer_is_no_failure_and_an_errored_or_empty_line_is_one_billed_attempt():
    assert line_failure(BatchLine("k", body={"choices": []}), "m") is None
    errored = line_failure(BatchLine("k", error_kind=ErrorKind.RATE_LIMITED, message="slow down", http_status=429), "m")
    empty = line_failure(BatchLine("k"), "m")
    assert (errored.error_kind, errored.error_message, errored.attempts, errored.model) == \
        (ErrorKind.RATE_LIMITED, "slow down", 1, "m")
    assert (empty.error_kind, empty.error_message, empty.attempts) == (ErrorKind.API, "no answer in the batch", 1)


def test_a_request_without_a_line_fails_by_how_the_batch_ended_in_the_collectors_words():
    cases = {"expired": (ErrorKind.TIMEOUT, "the batch expired (24 h window) before this request was processed"),
             "cancelled": (ErrorKind.API, "the batch was cancelled before this request was processed"),
             "failed": (ErrorKind.INVALID_INPUT, "the provider rejected the batch"),
             "completed": (ErrorKind.API, "the batch ended without a result for this request")}
    for status, (kind, why) in cases.items():
        out = missing_line(status, "batch_1", "m")
        assert (out.ok, out.error_kind, out.error_message, out.attempts) == (False, kind, f"in batch batch_1: {why}", 1)
    text = missing_line("expired", "b", "e", "this text", "embedded")
    assert text.error_message == "in batch b: the batch expired (24 h window) before this text was embedded"
    assert missing_line("ended", "b", "e", "this text", "embedded").error_message == \
        "in batch b: the batch ended without a result for this text"
