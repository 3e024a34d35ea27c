"""Credentials inside ``api_url`` (``user:PASS@`` and ``?key=SECRET``) go on the wire and nowhere else
(decision 0025): a real gateway in front of the simulator checks that every request carries them
(HTTP basic auth, the query parameter), and a real dbt project (debug, a run with failing
requests, a run against a refused port, alerts posted to a webhook) is searched for them in its
output, logs/, target/ and the audit tables."""
from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from base64 import b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from dbt_harness import one_model_project  # the dbtRunner helper of the dbt tests

from dbt_pg_llm import Engine, MemoryBackend, Model, ModelInput, ResultCache
from dbt_pg_llm.models.endpoints import check_endpoint

pytestmark = pytest.mark.functional

PASSWORD, KEY = "PASSw0rd-7f3a9c", "SECRETk-91be44d0"
SECRETS = (PASSWORD, KEY, b64encode(f"gw:{PASSWORD}".encode()).decode())


class Gateway:
    """An HTTP gateway that wants basic auth gw:PASSWORD and ?key=KEY on every request, answers 500
    for prompts containing FAIL, takes webhook posts on /hook and forwards the rest to the simulator."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.seen: list[tuple[str, str | None, str | None]] = []  # (path, authorization, key)
        self.hooks: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str):
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if parts.path == "/hook":
                    gateway.hooks.append(body.decode())
                    return self._answer(200, b"ok", "text/plain")
                auth, key = self.headers.get("authorization"), parse_qs(parts.query).get("key", [None])[0]
                gateway.seen.append((parts.path, auth, key))
                if auth != "Basic " + SECRETS[2] or key != KEY:
                    return self._answer(401, b'{"error": {"message": "gateway: credentials missing"}}')
                if b"FAIL" in body:
                    return self._answer(500, b'{"error": {"message": "upstream exploded"}}')
                request = urllib.request.Request(gateway.upstream + parts.path[len("/v1"):], data=body or None,
                                                 method=method, headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return self._answer(response.status, response.read())
                except urllib.error.HTTPError as exc:
                    return self._answer(exc.code, exc.read())

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def api_url(self, port: int | None = None) -> str:
        return f"http://gw:{PASSWORD}@127.0.0.1:{port or self.port}/v1?key={KEY}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(simulator):
    simulator.reset()
    gw = Gateway(simulator.base_url)
    yield gw
    gw.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_api_url_credentials_reach_the_server_and_no_message(gateway, simulator):
    model = Model("gw", {"api_url": gateway.api_url(), "model_version": "sim-small", "retry": {"max_retries": 0}})
    engine = Engine([model], cache=ResultCache(MemoryBackend()))
    try:
        ok = engine.call("gw", ModelInput("is the kettle any good?"), use_cache=False)
        failed = engine.call("gw", ModelInput("FAIL this one"), use_cache=False)
        refused = Model("down", {"api_url": gateway.api_url(closed_port()), "model_version": "sim-small",
                                 "retry": {"max_retries": 0}})
        engine.register(refused)
        unreachable = engine.call("down", ModelInput("hello"), use_cache=False)
    finally:
        engine.close()
    # on the wire: path before the query (was /v1?key=.../chat/completions), basic auth, the key
    assert ok.ok, ok.error_message
    assert gateway.seen[0] == ("/v1/chat/completions", "Basic " + SECRETS[2], KEY)
    assert simulator.stats()["requests"] == 1
    assert not failed.ok and "upstream exploded" in failed.error_message
    assert not unreachable.ok and "could not connect to http://127.0.0.1:" in unreachable.error_message
    assert "key=***" in unreachable.error_message
    for text in (failed.error_message, unreachable.error_message, repr(model.config), str(model.config)):
        assert not leaks(text), text
    check = check_endpoint("gw", model.config)  # what `dbt debug` runs: GET /v1/models with the credentials
    assert check.ok and gateway.seen[-1] == ("/v1/models", "Basic " + SECRETS[2], KEY)
    down = check_endpoint("down", refused.config)
    assert not down.ok and not leaks(str(down)) and "http://127.0.0.1:" in str(down)


def test_dbt_debug_run_logs_target_audit_and_alerts_carry_no_url_secret(pg, gateway, simulator, tmp_path):
    model_sql = """
{{ pg_llm.llm_enrich(
    "select i as id, case when i % 4 = 0 then 'FAIL review ' else 'review ' end || i as body"
    ~ " from generate_series(1, 12) i",
    {'summary': pg_llm.complete('body', max_tokens=16)}
) }}
"""
    env = {"DBT_ENV_SECRET_LLM_API_KEY": "",  # the gateway's basic auth is the Authorization header
           "LLM_MAX_RETRIES": "0", "LLM_MAX_ERROR_RATE": "1", "LLM_ALERT_MIN_REQUESTS": "1",
           "LLM_MAX_COST_USD_PER_RUN": "25",
           "DBT_ENV_SECRET_LLM_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{gateway.port}/hook"}
    texts: list[str] = []
    for project in one_model_project(tmp_path, pg, gateway.api_url(), "secret_project", "gw_summaries", model_sql,
                                     "sec"):
        texts.append(project.run("debug", **env).text)
        out = project.run("run", **env)
        texts.append(out.text)
        assert len(gateway.seen) >= 12 and all(s[1] == "Basic " + SECRETS[2] and s[2] == KEY for s in gateway.seen)
        errors = project.scalar(f'select count(*) from "{project.audit}".llm_errors')
        assert errors == 3  # the FAIL rows: 500 from the gateway
        down = project.run("run", "--full-refresh", LLM_API_URL=gateway.api_url(closed_port()),
                           LLM_TEMPERATURE="0.5", **env)  # a new fingerprint: every key is requested again
        texts.append(down.text)
        assert "could not connect to http://127.0.0.1:" in down.text
        assert "$0.000000 of the $25.0000 cap spent" in down.text  # refused: nothing can have been billed
        texts.append(project.run("debug", expect=False, LLM_API_URL=gateway.api_url(closed_port()), **env).text)
        for table in ("llm_calls", "llm_errors", "llm_alerts", "llm_runs"):
            texts += [row[0] for row in project.query(f'select t::text from "{project.audit}".{table} t')]
        assert any("could not connect" in t for t in texts[4:])  # the refused run's messages are stored
        files = [p for d in ("logs", "target") for p in (project.path / d).rglob("*") if p.is_file()]
        assert any(p.name == "dbt.log" for p in files) and any(p.name == "run_results.json" for p in files)
        texts += [p.read_text(errors="replace") for p in files]
    assert gateway.hooks, "the alerts were posted to the webhook"
    texts += gateway.hooks
    found = {s for t in texts for s in leaks(t)}
    assert not found, f"secrets of api_url leaked: {found}"
    assert any("key=***" in t for t in texts)  # the URLs are there, redacted
