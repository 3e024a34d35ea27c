"""The engine against the providers' *published* answers (issue 8 §13), over real HTTP on loopback.

A small server replays, verbatim, the error bodies and headers the providers document or that their
users report from production (sources in each scenario), so the engine's classification is checked
against the real thing and not against our own simulator's idea of it. For each: the error kind,
whether it was retried, how many requests reached the server, and how long the engine waited.

Sources:
* OpenAI error codes guide (platform.openai.com/docs/guides/error-codes) and the bodies users quote
  from it: ``rate_limit_exceeded`` ("Rate limit reached for ... Please try again in 300ms."),
  ``insufficient_quota`` ("You exceeded your current quota ..."), ``context_length_exceeded``,
  ``invalid_api_key`` ("Incorrect API key provided ..."), ``model_not_found``; rate-limit headers
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with Go durations (``6m0s``, ``300ms``).
  Structured-outputs guide: a refusal is ``message.refusal`` with ``content: null``.
* Anthropic errors page (docs.anthropic.com/en/api/errors): ``{"type": "error", "error": {"type":
  "overloaded_error", "message": "Overloaded"}, "request_id": ...}`` with HTTP 529; 429
  ``rate_limit_error`` with ``retry-after`` and ``anthropic-ratelimit-*`` headers (RFC 3339 resets);
  ``stop_reason: "refusal"``.
* nginx's stock 502 page, as a gateway in front of any of them returns it.
* LiteLLM's proxy refusing a parameter its backend lacks (BerriAI/litellm#17165, #4031):
  ``litellm.UnsupportedParamsError: ... does not support parameters: ['logprobs'] ...`` with 400.
* Ollama / llama.cpp server answers without ``usage`` or ``logprobs``; Azure OpenAI's deployment URL.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dbt_pg_llm import ErrorKind, Model, ModelInput, ResponseFormat
from dbt_pg_llm.models.runtime import shared_loop

OPENAI_OK = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine", "refusal": None},
                          "logprobs": None, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}
ANTHROPIC_OK = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
                "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 2}}
NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def openai_error(message, type_, code, param=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_error(type_, message):
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def rfc3339_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


# scenario -> the answers in order (the last one repeats): (status, headers, body or callable)
SCENARIOS = {
    "openai-rate-limit": [
        (429, {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
               "x-ratelimit-reset-requests": "300ms", "x-ratelimit-limit-tokens": "40000",
               "x-ratelimit-remaining-tokens": "39985", "x-ratelimit-reset-tokens": "22ms"},
         openai_error("Rate limit reached for gpt-4o-mini in organization org-abc123 on requests per min (RPM): "
                      "Limit 3, Used 3, Requested 1. Please try again in 300ms. Visit "
                      "https://platform.openai.com/account/rate-limits to learn more.", "requests",
                      "rate_limit_exceeded")),
        (200, {}, OPENAI_OK)],
    "openai-rate-limit-message-only": [
        (429, {}, openai_error("Rate limit reached for gpt-4o in organization org-abc123 on tokens per min (TPM): "
                               "Limit 30000, Used 29712, Requested 1034. Please try again in 450ms. Visit "
                               "https://platform.openai.com/account/rate-limits to learn more.", "tokens",
                               "rate_limit_exceeded")),
        (200, {}, OPENAI_OK)],
    "openai-insufficient-quota": [
        (429, {}, openai_error("You exceeded your current quota, please check your plan and billing details. For "
                               "more information on this error, read the docs: "
                               "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                               "insufficient_quota", "insufficient_quota"))],
    "openai-context-length": [
        (400, {}, openai_error("This model's maximum context length is 128000 tokens. However, your messages "
                               "resulted in 130532 tokens. Please reduce the length of the messages.",
                               "invalid_request_error", "context_length_exceeded", "messages"))],
    "openai-invalid-key": [
        (401, {}, openai_error("Incorrect API key provided: sk-abc12***************************************xyz9. "
                               "You can find your API key at https://platform.openai.com/account/api-keys.",
                               "invalid_request_error", "invalid_api_key"))],
    "openai-model-not-found": [
        (404, {}, openai_error("The model `gpt-9-turbo` does not exist or you do not have access to it.",
                               "invalid_request_error", "model_not_found"))],
    "openai-length": [
        (200, {}, {**OPENAI_OK, "choices": [{"index": 0, "message": {"role": "assistant",
                                                                    "content": '{"city": "Os', "refusal": None},
                                             "logprobs": None, "finish_reason": "length"}]})],
    "openai-refusal": [
        (200, {}, {**OPENAI_OK, "choices": [{"index": 0, "message": {
            "role": "assistant", "content": None, "refusal": "I'm sorry, I cannot assist with that request."},
            "logprobs": None, "finish_reason": "stop"}]})],
    "anthropic-overloaded": [
        (529, {}, anthropic_error("overloaded_error", "Overloaded")),
        (200, {}, ANTHROPIC_OK)],
    "anthropic-rate-limit": [
        (429, lambda: {"retry-after": "1", "anthropic-ratelimit-requests-limit": "50",
                       "anthropic-ratelimit-requests-remaining": "0",
                       "anthropic-ratelimit-requests-reset": rfc3339_in(1)},
         anthropic_error("rate_limit_error", "This request would exceed the rate limit for your organization "
                         "(abc) of 50 requests per minute. For details, refer to: "
                         "https://docs.anthropic.com/en/api/rate-limits.")),
        (200, {}, ANTHROPIC_OK)],
    "anthropic-rate-limit-reset-only": [
        (429, lambda: {"anthropic-ratelimit-tokens-limit": "40000", "anthropic-ratelimit-tokens-remaining": "0",
                       "anthropic-ratelimit-tokens-reset": rfc3339_in(0.6)},
         anthropic_error("rate_limit_error", "This request would exceed the rate limit for your organization "
                         "(abc) of 40,000 input tokens per minute.")),
        (200, {}, ANTHROPIC_OK)],
    "anthropic-refusal": [
        (200, {}, {**ANTHROPIC_OK, "content": [], "stop_reason": "refusal",
                   "usage": {"input_tokens": 40, "output_tokens": 0}})],
    "gateway-502": [(502, {"content-type": "text/html"}, NGINX_502)],
    # a LiteLLM proxy in front of Anthropic: every request carrying logprobs is refused
    "litellm-anthropic": lambda body: (400, {}, {"error": {
        "message": "litellm.UnsupportedParamsError: anthropic does not support parameters: ['logprobs', "
                   "'top_logprobs'], for model=claude-3-5-haiku-20241022. To drop these, set "
                   "`litellm.drop_params=True` or for proxy:\n\n`litellm_settings:\n drop_params: true`\n",
        "type": "None", "param": None, "code": "400"}}) if "logprobs" in body else (200, {}, OPENAI_OK),
    "ollama-no-usage": [(200, {}, {"id": "chatcmpl-7", "object": "chat.completion", "model": "llama3.2",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"},
                                                "finish_reason": "stop"}]})],
    "azure": [(200, {}, OPENAI_OK)],
}


class DocumentedServer:
    """Replays SCENARIOS at ``/<scenario>/v1/...`` and records when each request arrived."""

    def __init__(self):
        self.arrivals: dict[str, list[float]] = {}
        self.requests: dict[str, list[tuple[str, dict, dict]]] = {}  # scenario -> (path, headers, body)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                sent = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                name = self.path.strip("/").split("/")[0]
                seen = server.arrivals.setdefault(name, [])
                seen.append(time.monotonic())
                server.requests.setdefault(name, []).append((self.path, dict(self.headers), sent))
                answers = SCENARIOS[name]
                if callable(answers):
                    status, headers, body = answers(sent)
                else:
                    status, headers, body = answers[min(len(seen), len(answers)) - 1]
                headers = headers() if callable(headers) else dict(headers)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", headers.pop("content-type", "application/json"))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def waits(self, name: str) -> list[float]:
        times = self.arrivals.get(name, [])
        return [b - a for a, b in zip(times, times[1:])]


@pytest.fixture(scope="module")
def documented():
    server = DocumentedServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def call(documented, scenario, provider="openai", inp=None, **config):
    model = Model(scenario, {"provider": provider, "api_url": f"{documented.url}/{scenario}/v1",
                             "model_version": "claude-3-5-haiku-20241022" if provider == "anthropic" else "gpt-4o-mini",
                             "api_key": "sk-test-0123456789", "cost_per_1k_input_tokens": 1.0,
                             "cost_per_1k_output_tokens": 1.0,
                             "retry": {"max_retries": 2, "base_delay_ms": 1, "max_delay_ms": 50}, **config})
    try:
        return model.call(inp or ModelInput("hello"))
    finally:
        shared_loop().run(model.aclose())  # the client lives on the shared loop: close it there


# (scenario, provider, kind, recoverable, requests the server saw, minimum wait between them in s)
EXPECTED = [
    ("openai-rate-limit", "openai", ErrorKind.NONE, None, 2, 0.3),
    ("openai-rate-limit-message-only", "openai", ErrorKind.NONE, None, 2, 0.45),
    ("openai-insufficient-quota", "openai", ErrorKind.QUOTA, False, 1, None),
    ("openai-context-length", "openai", ErrorKind.INVALID_INPUT, False, 1, None),
    ("openai-invalid-key", "openai", ErrorKind.API, False, 1, None),
    ("openai-model-not-found", "openai", ErrorKind.API, False, 1, None),
    ("openai-refusal", "openai", ErrorKind.REFUSED, False, 1, None),
    ("anthropic-overloaded", "anthropic", ErrorKind.NONE, None, 2, None),
    ("anthropic-rate-limit", "anthropic", ErrorKind.NONE, None, 2, 1.0),
    ("anthropic-rate-limit-reset-only", "anthropic", ErrorKind.NONE, None, 2, 0.4),
    ("anthropic-refusal", "anthropic", ErrorKind.REFUSED, False, 1, None),
    ("gateway-502", "openai", ErrorKind.API, True, 3, None),
]


@pytest.mark.parametrize("scenario, provider, kind, recoverable, requests, min_wait", EXPECTED,
                         ids=[e[0] for e in EXPECTED])
def test_documented_answer(documented, scenario, provider, kind, recoverable, requests, min_wait):
    out = call(documented, scenario, provider)
    assert out.error_kind is kind, out.error_message
    if recoverable is not None:
        assert out.recoverable is recoverable
    assert len(documented.arrivals[scenario]) == requests
    assert out.attempts == requests
    if min_wait is not None:
        assert min(documented.waits(scenario)) >= min_wait * 0.95


def test_messages_keep_the_providers_words(documented):
    assert "Incorrect API key provided" in call(documented, "openai-invalid-key").error_message
    assert "gpt-9-turbo` does not exist" in call(documented, "openai-model-not-found").error_message
    assert "maximum context length is 128000" in call(documented, "openai-context-length").error_message
    refused = call(documented, "openai-refusal")
    assert "I'm sorry, I cannot assist with that request." in refused.error_message
    assert refused.tokens.total == 14 and refused.cost_usd == pytest.approx(0.014)
    gateway = call(documented, "gateway-502", retry={"max_retries": 0})
    assert "502 Bad Gateway" in gateway.error_message and "<" not in gateway.error_message


def test_finish_reason_length(documented):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    out = call(documented, "openai-length", inp=ModelInput("x", response_format=ResponseFormat.json(schema)))
    assert out.error_kind is ErrorKind.INVALID_OUTPUT and "truncated at max_tokens" in out.error_message
    assert out.attempts == 1 and out.tokens.total == 14  # not retried; paid tokens kept
    text = call(documented, "openai-length")
    assert text.ok and text.truncated and text.text == '{"city": "Os'


def test_litellm_rejecting_logprobs_is_asked_once_more_without_them_and_remembered(documented):
    labels = ResponseFormat.one_of(["fine", "bad"])
    model = Model("via-litellm", {"api_url": f"{documented.url}/litellm-anthropic/v1", "model_version": "claude",
                                  "retry": {"max_retries": 0}})
    try:
        first = model.call(ModelInput("a", response_format=labels))
        second = model.call(ModelInput("b", response_format=labels))
    finally:
        shared_loop().run(model.aclose())
    assert first.ok and second.ok and first.value == "fine" and first.confidence is None
    assert ["logprobs" in body for _, _, body in documented.requests["litellm-anthropic"]] == [True, False, False]


def test_local_server_without_usage_or_logprobs(documented):
    out = call(documented, "ollama-no-usage", inp=ModelInput("a", response_format=ResponseFormat.one_of(
        ["positive", "negative"])))
    assert out.ok and out.value == "positive" and out.confidence is None and out.tokens.total == 0


def test_azure_openai_over_http(documented):
    out = call(documented, "azure", provider="azure", api_url=f"{documented.url}/azure", deployment="prod-4o",
               api_version="2024-10-21")
    assert out.ok and out.text == "fine"
    path, headers, _ = documented.requests["azure"][0]
    assert path == "/azure/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    assert headers["api-key"] == "sk-test-0123456789" and "Authorization" not in headers


def test_a_refusal_reaches_llm_errors_with_the_providers_words_and_its_cost(documented, db, pg_conn):
    from types import SimpleNamespace

    from test_pg_enrich import make_engine, make_source, q, spec

    from dbt_pg_llm.pg import RunContext, fill_column

    connect, schema, audit = db
    source = make_source(pg_conn, schema, ["something forbidden"])
    engine = make_engine(SimpleNamespace(base_url=f"{documented.url}/openai-refusal/v1"), cost=True)
    try:
        report = fill_column(connect, engine, source, spec(), audit_schema=audit, run=RunContext("r", "model.p.x"))
    finally:
        engine.close()
    assert report.errors == 1
    assert q(pg_conn, f'select error_kind, message, attempts from "{audit}".llm_errors') == [
        ("refused", "the model refused: I'm sorry, I cannot assist with that request.", 1)]
    calls = q(pg_conn, f'select error_kind, prompt_tokens, completion_tokens, cost_usd > 0 from "{audit}".llm_calls '
                       "where not cached")
    assert calls == [("refused", 12, 2, True)]
    assert q(pg_conn, f'select count(*) from "{audit}".llm_results') == [(0,)]  # nothing failed is cached
