"""The bundled OpenAI/Anthropic-compatible simulator, over real HTTP on loopback."""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time

import httpx
import jsonschema
import pytest

from dbt_pg_llm.simulator import SimulatorConfig, SimulatorProcess, SimulatorServer
from dbt_pg_llm.simulator.answers import JSON_PHRASE, LABELS_PHRASE

pytestmark = pytest.mark.functional

LABELS = ["positive", "negative", "neutral"]
LABELS_SYSTEM = f"You classify reviews.\n{LABELS_PHRASE}{' | '.join(LABELS)}\nBe brief."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2},
        "sentiment": {"type": "string", "enum": ["pos", "neg"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "address": {"$ref": "#/$defs/address"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
    },
    "required": ["name", "sentiment", "score", "address"],
    "additionalProperties": False,
    "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}},
}


@pytest.fixture(scope="module")
def sim():
    with SimulatorServer(SimulatorConfig(cost_per_1k_input=0.5, cost_per_1k_output=1.5, stall_s=2)) as server:
        yield server


@pytest.fixture
def client(sim):
    sim.reset()
    with httpx.Client(base_url=sim.base_url, timeout=5) as c:
        yield c


def chat(client, user, system=None, **kw):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return client.post("/chat/completions", json={"model": "sim-small", "messages": messages, **kw})


def content(resp):
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


# -- answers ---------------------------------------------------------------------------------------
def test_labels_answered_from_the_list(client):
    answers = {content(chat(client, f"review {i}: so-so", LABELS_SYSTEM)) for i in range(30)}
    assert answers <= set(LABELS) and len(answers) > 1
    assert content(chat(client, "I love it, positive!", LABELS_SYSTEM)) == "positive"
    assert content(chat(client, "Clearly NEGATIVE.", LABELS_SYSTEM)) == "negative"


def test_json_schema_via_response_format_and_system_phrase(client):
    rf = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}  # not strict: optional keys
    for i in range(10):
        value = json.loads(content(chat(client, f"Ada Lovelace review {i}", response_format=rf)))
        jsonschema.validate(value, SCHEMA)
        assert set(value) == set(SCHEMA["properties"])
    system = f"Extract fields.\n{JSON_PHRASE}{json.dumps(SCHEMA)}\nNo prose."
    value = json.loads(content(chat(client, "Grace Hopper, Arlington", system)))
    jsonschema.validate(value, SCHEMA)
    obj = json.loads(content(chat(client, "anything, as JSON", response_format={"type": "json_object"})))
    assert isinstance(obj, dict) and obj


def test_text_answers_are_deterministic_across_seeds_and_servers(client):
    first = content(chat(client, "Describe the weather in Paris in spring"))
    assert first.startswith("Summary: ") and 5 <= len(first.split()) <= 20
    assert content(chat(client, "Describe the weather in Paris in spring")) == first
    assert content(chat(client, "Describe the weather in Rome in autumn")) != first
    with SimulatorServer(SimulatorConfig(seed=1234)) as other:
        r = httpx.post(other.base_url + "/chat/completions", json={
            "model": "x", "messages": [{"role": "user", "content": "Describe the weather in Paris in spring"}]})
        assert content(r) == first


def test_max_tokens_cuts_with_finish_reason_length(client):
    r = chat(client, "one two three four five six seven eight nine ten eleven twelve", max_tokens=2)
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 2
    assert len(body["choices"][0]["message"]["content"]) <= 8


def test_usage_and_ledger(client, sim):
    prompts = ["alpha beta gamma", "delta epsilon", "alpha beta gamma"]
    usage = [chat(client, p, "sys prompt").json()["usage"] for p in prompts]
    for u, p in zip(usage, prompts):
        assert u["prompt_tokens"] == math.ceil(len("sys prompt") / 4) + 3 + math.ceil(len(p) / 4) + 3
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] >= u["prompt_tokens"] + 1
    assert chat(client, "boom [[fault:500]]").status_code == 500  # not billed
    stats = sim.stats()
    assert stats["requests"] == 4
    assert stats["by_prompt_sha256"] == {sha("alpha beta gamma"): 2, sha("delta epsilon"): 1,
                                         sha("boom [[fault:500]]"): 1}
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in usage)
    expected = stats["prompt_tokens"] / 1000 * 0.5 + stats["completion_tokens"] / 1000 * 1.5
    assert stats["cost_usd"] == pytest.approx(expected)
    assert stats["faults"] == {"500": 1}
    assert httpx.post(sim.url + "/_reset").json() == {"ok": True}
    zero = httpx.get(sim.url + "/_stats").json()
    assert zero["requests"] == 0 and zero["by_prompt_sha256"] == {} and zero["cost_usd"] == 0


def test_logprobs(client):
    body = chat(client, "rate this", LABELS_SYSTEM, logprobs=True, top_logprobs=2).json()
    lp = body["choices"][0]["logprobs"]["content"]
    assert lp and "".join(t["token"] for t in lp) == body["choices"][0]["message"]["content"]
    assert all(-1.5 < t["logprob"] < 0 and len(t["top_logprobs"]) == 2 for t in lp)
    again = chat(client, "rate this", LABELS_SYSTEM, logprobs=True, top_logprobs=2).json()
    assert again["choices"][0]["logprobs"]["content"] == lp


def test_models_health_and_bad_request(client, sim):
    assert httpx.get(sim.url + "/_health").json() == {"status": "ok"}
    assert client.get("/models").json()["object"] == "list"
    r = client.post("/chat/completions", json={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_required():
    with SimulatorServer(SimulatorConfig(api_key="sk-test-secret")) as s:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(s.base_url + "/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["message"]
        assert "sk-test-secret" not in r.text
        r = httpx.post(s.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        ok = httpx.post(s.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer sk-test-secret"})
        assert ok.status_code == 200
        body["max_tokens"] = 10
        r = httpx.post(s.base_url + "/messages", json=body, headers={"x-api-key": "nope"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = httpx.post(s.base_url + "/messages", json=body, headers={"x-api-key": "sk-test-secret"})
        assert r.status_code == 200
        assert s.stats()["unauthorized"] == 3


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,status,check", [
    ("429", 429, lambda r: r.headers["Retry-After"] == "1" and r.headers["retry-after-ms"] == "1000"
     and r.json()["error"]["code"] == "rate_limit_exceeded"),
    ("500", 500, lambda r: r.json()["error"]["type"] == "server_error"),
    ("503", 503, lambda r: "error" in r.json()),
    ("529", 529, lambda r: r.json()["error"]["type"] == "overloaded_error"),
    ("insufficient_quota", 429, lambda r: r.json()["error"]["code"] == "insufficient_quota"
     and "Retry-After" not in r.headers),
    ("error_body", 200, lambda r: r.json()["error"]["type"] == "server_error" and "choices" not in r.json()),
    ("length", 200, lambda r: r.json()["choices"][0]["finish_reason"] == "length"),
    ("content_filter", 200, lambda r: r.json()["choices"][0]["finish_reason"] == "content_filter"
     and r.json()["choices"][0]["message"]["content"] == ""),
])
def test_fault_kinds_with_status(client, kind, status, check):
    r = chat(client, f"text [[fault:{kind}]] here")
    assert r.status_code == status
    assert check(r)


def test_malformed_is_a_502_html_page(client):
    """A proxy's error page, as a real gateway sends it: status 502, HTML, not the API's JSON."""
    for stream in (False, True):
        r = chat(client, "x [[fault:malformed]]", stream=stream)
        assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
        assert "<h1>502 Bad Gateway</h1>" in r.text
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)


@pytest.mark.parametrize("kind", ["reset", "truncated"])
def test_reset_and_truncated_give_transport_errors(client, sim, kind):
    with pytest.raises(httpx.TransportError):
        chat(client, f"x [[fault:{kind}]]")
    assert content(chat(client, "the connection pool still works")) and sim.stats()["faults"] == {kind: 1}


def test_stall_exceeds_client_timeout(client):
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the server stalls stall_s = 2 s
        client.post("/chat/completions", timeout=0.5,
                    json={"model": "m", "messages": [{"role": "user", "content": "x [[fault:stall]]"}]})
    assert time.monotonic() - started < 1.5


def test_scripted_fault_then_success(client, sim):
    prompt = "flaky row [[fault:500*2]]"
    assert [chat(client, prompt).status_code for _ in range(3)] == [500, 500, 200]
    assert chat(client, prompt).status_code == 200
    stats = sim.stats()
    assert stats["by_prompt_sha256"][sha(prompt)] == 4 and stats["faults"] == {"500": 2}
    sim.reset()  # resets the scripted counter too
    assert chat(client, prompt).status_code == 500


def test_random_faults_follow_seed_and_rate():
    def run(seed):
        with SimulatorServer(SimulatorConfig(faults={"500": 0.3, "503": 0.2}, seed=seed)) as s:
            with httpx.Client(base_url=s.base_url) as c:
                return [chat(c, f"row {i}").status_code for i in range(200)], s.stats()["faults"]
    codes, faults = run(7)
    assert run(7)[0] == codes
    assert 35 <= codes.count(500) <= 85 and 20 <= codes.count(503) <= 60 and codes.count(200) > 60
    assert faults == {"500": codes.count(500), "503": codes.count(503)}


def test_rpm_and_tpm_limits():
    with SimulatorServer(SimulatorConfig(rpm=2)) as s, httpx.Client(base_url=s.base_url) as c:
        codes = [chat(c, f"q{i}") for i in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        r = codes[2]
        assert int(r.headers["Retry-After"]) >= 1 and int(r.headers["retry-after-ms"]) > 1000
        assert r.json()["error"]["code"] == "rate_limit_exceeded" and s.stats()["rate_limited"] == 1
    with SimulatorServer(SimulatorConfig(tpm=60)) as s, httpx.Client(base_url=s.base_url) as c:
        statuses = [chat(c, "a fairly long prompt " * 4).status_code for _ in range(3)]
        assert statuses[0] == 200 and 429 in statuses


# -- concurrency and latency -----------------------------------------------------------------------
def test_max_concurrency_and_latency():
    with SimulatorServer(SimulatorConfig(max_concurrency=2, latency_ms=150)) as s:
        async def go():
            async with httpx.AsyncClient(base_url=s.base_url, timeout=10) as c:
                t = time.monotonic()
                rs = await asyncio.gather(*(c.post("/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": f"r{i}"}]}) for i in range(6)))
                return time.monotonic() - t, rs
        elapsed, rs = asyncio.run(go())
        assert all(r.status_code == 200 for r in rs)
        assert elapsed >= 0.44  # 3 waves of 150 ms
        stats = s.stats()
        assert stats["max_active"] == 2 and stats["max_in_flight"] >= 3


# -- anthropic and streaming -----------------------------------------------------------------------
def test_anthropic_messages(client):
    body = {"model": "claude", "system": LABELS_SYSTEM, "max_tokens": 20,
            "messages": [{"role": "user", "content": "I love it, positive!"}]}
    r = client.post("/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    data = r.json()
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["content"] == [{"type": "text", "text": "positive"}] and data["stop_reason"] == "end_turn"
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] == 2
    body["system"] = f"{JSON_PHRASE}{json.dumps(SCHEMA)}"
    jsonschema.validate(json.loads(client.post("/messages", json=body | {"max_tokens": 500}).json()["content"][0]["text"]),
                        SCHEMA)
    body["messages"][0]["content"] = "busy [[fault:529]]"
    r = client.post("/messages", json=body)
    assert r.status_code == 529 and r.json() == {"type": "error", "error": {"type": "overloaded_error",
                                                                            "message": "Overloaded"},
                                                 "request_id": r.headers["request-id"]}
    body["messages"][0]["content"] = "many words " * 20
    body["system"] = None
    assert client.post("/messages", json=body | {"max_tokens": 3}).json()["stop_reason"] == "max_tokens"


def stream_lines(client, path, body):
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line for line in r.iter_lines() if line]


def test_openai_streaming(client):
    plain = chat(client, "stream this answer please").json()
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "stream this answer please"}]}
    lines = stream_lines(client, "/chat/completions", body)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # usage only when asked for
    # with stream_options.include_usage: "usage": null on every chunk, then one last chunk with
    # "choices": [] and the usage
    lines = stream_lines(client, "/chat/completions", body | {"stream_options": {"include_usage": True}})
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])


def test_anthropic_streaming(client):
    body = {"model": "c", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hello stream"}]}
    with client.stream("POST", "/messages", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-1]["type"] == "message_stop" and events[-2]["usage"]["output_tokens"] >= 1
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text.startswith("Summary: ")


def test_configure_live(client, sim):
    sim.configure(faults={"503": 1.0})
    try:
        assert chat(client, "now failing").status_code == 503
    finally:
        sim.configure(faults={})
    assert chat(client, "healed").status_code == 200


# -- subprocess ------------------------------------------------------------------------------------
def test_simulator_process_starts_and_answers():
    with SimulatorProcess(["--fault", "500=1", "--api-key", "k123", "--cost-per-1k-input", "1"]) as proc:
        assert proc.base_url.startswith("http://127.0.0.1:") and proc.port > 0
        headers = {"Authorization": "Bearer k123"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(proc.base_url + "/chat/completions", json=body, headers=headers).status_code == 500
        proc.configure(faults={})
        r = httpx.post(proc.base_url + "/chat/completions", json=body, headers=headers)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        stats = proc.stats()
        assert stats["requests"] == 2 and stats["faults"] == {"500": 1} and stats["cost_usd"] > 0
        proc.reset()
        assert proc.stats()["requests"] == 0
        child = proc.process
    assert child.poll() is not None


def test_stop_sequences_and_per_token_latency(client):
    full = content(chat(client, "alpha beta gamma delta epsilon zeta eta theta"))
    word = full.split()[2]
    r = chat(client, "alpha beta gamma delta epsilon zeta eta theta", stop=[" " + word])
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert full.startswith(content(r)) and len(content(r)) < len(full)
    with SimulatorServer(SimulatorConfig(per_token_ms=10)) as s, httpx.Client(base_url=s.base_url) as c:
        started = time.monotonic()
        ctoks = chat(c, "alpha beta gamma delta epsilon zeta eta theta").json()["usage"]["completion_tokens"]
        assert time.monotonic() - started >= ctoks * 0.010 * 0.9
