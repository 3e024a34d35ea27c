"""URL credentials (decision 0025): redacted in every text, kept on the wire; connect failures are
marked unsent (refunded by the spend limit), read timeouts are not."""
from __future__ import annotations

import logging
import pickle

import aiohttp
import httpx
import pytest

from dbt_pg_llm import ConfigError, ErrorKind, Model, ModelError
from dbt_pg_llm.errors import redact
from dbt_pg_llm.models.providers.base import classify_transport_error
from dbt_pg_llm.urls import endpoint, redact_url, split_credentials, url_secrets

URL = "https://gw:S3cr3t-pass@llm.example.com:8443/v1?key=QUERYKEY123&api-version=2024-10-21"


def test_redact_removes_userinfo_and_query_values_from_any_text():
    text = (f"Cannot connect: {URL}/chat/completions; ClientResponseError(url=URL('{URL}'))"
            " see http://plain.example.com/docs")
    out = redact(text)
    assert "S3cr3t-pass" not in out and "QUERYKEY123" not in out and "gw:" not in out
    assert "https://***@llm.example.com:8443/v1?key=***&api-version=2024-10-21" in out
    assert "http://plain.example.com/docs" in out  # nothing secret, left alone
    assert redact_url("http://h/v1?a=1&b=&c=xyz") == "http://h/v1?a=***&b=***&c=***"


def test_endpoint_puts_the_path_before_the_query_and_credentials_become_a_basic_header():
    url = endpoint(URL, "/chat/completions")
    assert url.startswith("https://gw:S3cr3t-pass@llm.example.com:8443/v1/chat/completions?key=QUERYKEY123")
    clean, basic = split_credentials(url)
    assert clean == "https://llm.example.com:8443/v1/chat/completions?key=QUERYKEY123&api-version=2024-10-21"
    assert basic == "Basic Z3c6UzNjcjN0LXBhc3M="  # gw:S3cr3t-pass
    assert split_credentials("http://h/v1") == ("http://h/v1", None)
    assert endpoint("http://h/v1/", "/models", {"api-version": "x"}) == "http://h/v1/models?api-version=x"
    assert {"S3cr3t-pass", "QUERYKEY123", "Z3c6UzNjcjN0LXBhc3M="} <= set(url_secrets(URL))


def test_provider_sends_basic_auth_and_keeps_the_query():
    model = Model("gw", {"api_url": URL, "model_version": "m", "provider": "anthropic", "api_key": "ak-123456"})
    provider = model.provider
    assert provider.url == "https://llm.example.com:8443/v1/messages?key=QUERYKEY123&api-version=2024-10-21"
    headers = provider.wire_headers()
    assert headers["authorization"] == "Basic Z3c6UzNjcjN0LXBhc3M=" and headers["x-api-key"] == "ak-123456"
    assert "S3cr3t-pass" not in repr(model.config) and "QUERYKEY123" not in repr(model.config)
    printable = str(model.config.to_dict())
    assert "S3cr3t-pass" not in printable and "QUERYKEY123" not in printable
    assert "S3cr3t-pass" in model.config.to_dict(include_secret=True)["api_url"]  # Model.with_changes needs it


def test_userinfo_beside_a_bearer_api_key_is_a_config_error_naming_the_key_without_the_password():
    with pytest.raises(ConfigError) as info:
        Model("gw", {"api_url": URL, "model_version": "m", "api_key": "sk-abcdef123456"})
    text = str(info.value)
    assert "api_url" in text and "one Authorization header" in text and "S3cr3t-pass" not in text


def test_connect_failures_are_unsent_read_timeouts_are_not():
    refused = classify_transport_error(httpx.ConnectError("[Errno 111] Connection refused"), "m", 1000, URL)
    assert refused.unsent and refused.kind is ErrorKind.API and "S3cr3t-pass" not in refused.message
    connect_timeout = classify_transport_error(aiohttp.ConnectionTimeoutError("connect"), "m", 1000)
    assert connect_timeout.unsent and connect_timeout.kind is ErrorKind.TIMEOUT
    read_timeout = classify_transport_error(aiohttp.SocketTimeoutError("read"), "m", 1000)
    assert not read_timeout.unsent and read_timeout.kind is ErrorKind.TIMEOUT
    assert pickle.loads(pickle.dumps(refused)).unsent
    assert not ModelError(ErrorKind.API, "x").unsent


def test_engine_log_lines_reach_dbt_without_url_credentials():
    from dbt.adapters.pg_llm.log_bridge import DbtLogHandler

    class Capture:
        def __init__(self):
            self.lines = []

        def warning(self, message):
            self.lines.append(message)

        error = info = debug = warning

    capture = Capture()
    handler = DbtLogHandler(capture)  # type: ignore[arg-type]
    record = logging.LogRecord("dbt_pg_llm", logging.WARNING, __file__, 1, "retrying %s", (URL,), None)
    handler.emit(record)
    assert capture.lines and "S3cr3t-pass" not in capture.lines[0] and "QUERYKEY123" not in capture.lines[0]
    assert "https://***@llm.example.com:8443/v1?key=***" in capture.lines[0]
