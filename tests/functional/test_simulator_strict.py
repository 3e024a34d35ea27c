"""The simulator is as strict as the real APIs: request validation, response shapes, real-looking faults.

Raw HTTP (httpx) so every byte of the wire format is checked; tests/functional/test_simulator_contract.py
checks the same through the official SDKs.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
from datetime import datetime, timezone

import httpx
import jsonschema
import pytest

from dbt_pg_llm.simulator import SimulatorConfig, SimulatorProcess, SimulatorServer
from dbt_pg_llm.simulator.answers import LABELS_PHRASE

ANTH = {"anthropic-version": "2023-06-01"}
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def strict_sim(simulator_factory):
    return simulator_factory(SimulatorConfig(models=("gpt-test", "claude-test"), reject_params=("logit_bias",),
                                             cost_per_1k_input=1.0, cost_per_1k_output=2.0))


@pytest.fixture
def client(strict_sim):
    with httpx.Client(base_url=strict_sim.base_url, timeout=5) as c:
        yield c


def openai_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert r.headers["x-request-id"].startswith("req_")
    return body["error"]


def anthropic_error(r, status, kind):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    assert body["request_id"] == r.headers["request-id"]
    return body["error"]["message"]


# -- point 8: validation ---------------------------------------------------------------------------
def test_openai_requests_are_validated(client, strict_sim):
    post = lambda **kw: client.post("/chat/completions", json=kw)  # noqa: E731
    err = openai_error(post(model="gpt-nope", messages=USER), 404)
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error" and "gpt-nope" in err["message"]
    assert openai_error(post(messages=USER), 400)["message"] == "you must provide a model parameter"
    err = openai_error(post(model="gpt-test", messages=USER, temperature=2.5), 400)
    assert err["param"] == "temperature" and err["code"] == "decimal_above_max_value"
    assert openai_error(post(model="gpt-test", messages=USER, temperature=-1), 400)["code"] == "decimal_below_min_value"
    err = openai_error(post(model="gpt-test", messages=USER, top_logprobs=2), 400)
    assert err["param"] == "top_logprobs" and "'logprobs' is enabled" in err["message"]
    err = openai_error(post(model="gpt-test", messages=USER, stream_options={"include_usage": True}), 400)
    assert err["param"] == "stream_options"
    err = openai_error(post(model="gpt-test", messages=USER, bogus=1), 400)
    assert err["message"] == "Unrecognized request argument supplied: bogus"
    err = openai_error(post(model="gpt-test", messages=USER, stop=["a", "b", "c", "d", "e"]), 400)
    assert err["param"] == "stop" and err["code"] == "array_above_max_length"
    err = openai_error(post(model="gpt-test", messages=[{"role": "robot", "content": "x"}]), 400)
    assert err["code"] == "invalid_value" and err["param"] == "messages[0].role"
    rf = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    assert openai_error(post(model="gpt-test", messages=USER, response_format=rf), 400)["code"] == \
        "missing_required_parameter"
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": loose}}
    err = openai_error(post(model="gpt-test", messages=USER, response_format=rf), 400)
    assert "additionalProperties" in err["message"] and err["param"] == "response_format"
    rf["json_schema"]["schema"] = {**loose, "additionalProperties": False, "required": ["a"]}
    assert post(model="gpt-test", messages=USER, response_format=rf).status_code == 200
    assert post(model="gpt-test", messages=USER, logprobs=True, top_logprobs=2, temperature=2).status_code == 200
    stats = strict_sim.stats()
    assert stats["rejected"] == 11 and stats["answered"] == 2 and stats["prompt_tokens"] > 0


def test_anthropic_requests_are_validated(client):
    post = lambda **kw: client.post("/messages", json=kw, headers=ANTH)  # noqa: E731
    assert "claude-nope" in anthropic_error(post(model="claude-nope", max_tokens=5, messages=USER), 404,
                                            "not_found_error")
    assert anthropic_error(post(model="claude-test", messages=USER), 400,
                           "invalid_request_error") == "max_tokens: Field required"
    assert anthropic_error(post(max_tokens=5, messages=USER), 400, "invalid_request_error") == "model: Field required"
    system_role = [{"role": "system", "content": "be brief"}] + USER
    assert "top-level `system` parameter" in anthropic_error(
        post(model="claude-test", max_tokens=5, messages=system_role), 400, "invalid_request_error")
    assert anthropic_error(post(model="claude-test", max_tokens=5, messages=USER, temperature=1.5), 400,
                           "invalid_request_error") == "temperature: Input should be less than or equal to 1"
    assert anthropic_error(post(model="claude-test", max_tokens=5, messages=USER, logprobs=True), 400,
                           "invalid_request_error") == "logprobs: Extra inputs are not permitted"
    tools = [{"name": "a", "input_schema": {"type": "object"}}]
    assert "'b' not found" in anthropic_error(post(model="claude-test", max_tokens=5, messages=USER, tools=tools,
                                                   tool_choice={"type": "tool", "name": "b"}), 400,
                                              "invalid_request_error")
    ok = post(model="claude-test", max_tokens=5, messages=USER, temperature=1, system="be brief")
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")


def test_reject_params_mimics_servers_without_them(client):
    body = {"model": "gpt-test", "messages": USER, "logit_bias": {"50256": -100}}
    r = client.post("/chat/completions", json=body)
    err = openai_error(r, 400)  # LiteLLM's UnsupportedParamsError, naming the parameter
    assert err["param"] == "logit_bias" and "does not support parameters: ['logit_bias']" in err["message"]
    r = client.post("/messages", json={"model": "claude-test", "max_tokens": 5, "messages": USER, "top_k": 5},
                    headers=ANTH)
    assert r.status_code == 200  # only the listed parameters are refused
    with SimulatorServer(SimulatorConfig(reject_params="logprobs,top_logprobs")) as s:
        r = httpx.post(s.base_url + "/chat/completions",
                       json={"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
        assert httpx.post(s.base_url + "/chat/completions", json={"model": "m", "messages": USER}).status_code == 200


def test_knobs_change_live_over_http():
    with SimulatorProcess() as proc:
        shown = proc.configure(models=["live-model"], reject_params=["seed"], rate_limit_headers="none")
        assert shown["models"] == ["live-model"] and shown["reject_params"] == ["seed"]
        body = {"model": "live-model", "messages": USER}
        assert httpx.post(proc.base_url + "/chat/completions", json=body).status_code == 200
        assert httpx.post(proc.base_url + "/chat/completions", json=body | {"seed": 1}).status_code == 400
        assert httpx.post(proc.base_url + "/chat/completions", json=body | {"model": "x"}).status_code == 404
        with pytest.raises(urllib.error.HTTPError) as info:  # a bad value is refused, naming the knob
            proc.configure(rate_limit_headers="sometimes")
        assert info.value.code == 400 and b"rate_limit_headers" in info.value.read()


def test_command_line_flags_for_models_params_and_headers():
    args = ["--models", "only-this", "--reject-params", "logprobs", "--rate-limit-headers", "x-ratelimit",
            "--fault", "429=1"]
    with SimulatorProcess(args) as proc:
        r = httpx.post(proc.base_url + "/chat/completions", json={"model": "other", "messages": USER})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.post(proc.base_url + "/chat/completions", json={"model": "only-this", "messages": USER,
                                                                   "logprobs": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
        r = httpx.post(proc.base_url + "/chat/completions", json={"model": "only-this", "messages": USER})
        assert r.status_code == 429 and r.headers["x-ratelimit-reset-requests"] == "1s"
        assert "retry-after" not in r.headers
        models = httpx.get(proc.base_url + "/models").json()
        assert [m["id"] for m in models["data"]] == ["only-this"]


# -- point 9: shapes -------------------------------------------------------------------------------
def test_openai_answer_shape_n_choices_usage_details_and_request_id(client, strict_sim):
    r = client.post("/chat/completions", json={"model": "gpt-test", "messages": USER, "n": 3})
    body = r.json()
    assert r.headers["x-request-id"].startswith("req_")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] and c["message"]["refusal"] is None for c in body["choices"])
    one = client.post("/chat/completions", json={"model": "gpt-test", "messages": USER}).json()["usage"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 3 * one["completion_tokens"]  # every choice is billed
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert strict_sim.stats()["completion_tokens"] == 4 * one["completion_tokens"]


def test_anthropic_stream_has_event_lines_and_usage(client):
    body = {"model": "claude-test", "max_tokens": 50, "stream": True, "messages": USER}
    with client.stream("POST", "/messages", json=body, headers=ANTH) as r:
        assert r.headers["request-id"].startswith("req_")
        raw = r.read().decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for lines in events:  # every event line names the data's type
        assert lines[0].startswith("event: ") and json.loads(lines[1][6:])["type"] == lines[0][7:]
    start = json.loads(events[0][1][6:])["message"]
    assert start["usage"]["input_tokens"] > 0 and "cache_read_input_tokens" in start["usage"]
    delta = json.loads(events[-2][1][6:])
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] >= 1


def test_anthropic_stream_error_is_an_error_event(client):
    body = {"model": "claude-test", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "x [[fault:error_body]]"}]}
    with client.stream("POST", "/messages", json=body, headers=ANTH) as r:
        raw = r.read().decode()
    assert raw.startswith("event: message_start\n")
    assert "event: error\ndata: " in raw
    error = json.loads(raw.split("event: error\ndata: ", 1)[1])
    assert error == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_anthropic_models_list_shape(client):
    r = client.get("/models", headers=ANTH)
    body = r.json()
    assert set(body) == {"data", "has_more", "first_id", "last_id"} and body["has_more"] is False
    assert [m["id"] for m in body["data"]] == ["gpt-test", "claude-test"]
    first = body["data"][0]
    assert first["type"] == "model" and first["display_name"] == "Gpt Test"
    datetime.fromisoformat(first["created_at"].replace("Z", "+00:00"))
    assert (body["first_id"], body["last_id"]) == ("gpt-test", "claude-test")
    page = client.get("/models", params={"limit": 1}, headers=ANTH).json()
    assert page["has_more"] is True and [m["id"] for m in page["data"]] == ["gpt-test"]
    rest = client.get("/models", params={"after_id": "gpt-test"}, headers=ANTH).json()
    assert [m["id"] for m in rest["data"]] == ["claude-test"] and rest["has_more"] is False
    assert client.get("/models").json()["object"] == "list"  # OpenAI's shape without anthropic-version


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["sentiment", "score"],
          "properties": {"sentiment": {"type": "string", "enum": ["pos", "neg"]},
                         "score": {"type": "integer", "minimum": 1, "maximum": 5}}}


def test_anthropic_forced_tool_use_matches_openai_json_schema(client):
    tools = [{"name": "record", "description": "Record the answer", "input_schema": SCHEMA}]
    body = {"model": "claude-test", "max_tokens": 200, "messages": [{"role": "user", "content": "Great stuff"}],
            "system": "Extract.", "tools": tools, "tool_choice": {"type": "tool", "name": "record"}}
    data = client.post("/messages", json=body, headers=ANTH).json()
    assert data["stop_reason"] == "tool_use" and len(data["content"]) == 1
    block = data["content"][0]
    assert block["type"] == "tool_use" and block["name"] == "record" and block["id"].startswith("toolu_")
    jsonschema.validate(block["input"], SCHEMA)
    rf = {"type": "json_schema", "json_schema": {"name": "record", "strict": True, "schema": SCHEMA}}
    openai = client.post("/chat/completions", json={
        "model": "gpt-test", "response_format": rf,
        "messages": [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Great stuff"}]}).json()
    assert json.loads(openai["choices"][0]["message"]["content"]) == block["input"]  # same model, same answer
    with client.stream("POST", "/messages", json=body | {"stream": True}, headers=ANTH) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[1]["content_block"] | {"input": None, "id": None} == block | {"input": None, "id": None}
    partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
    assert json.loads(partial) == block["input"] and events[-2]["delta"]["stop_reason"] == "tool_use"


# -- point 10: faults ------------------------------------------------------------------------------
def chat(client, text, **kw):
    return client.post("/chat/completions", json={"model": "gpt-test", "messages": [
        {"role": "user", "content": text}], **kw})


def message(client, text, **kw):
    return client.post("/messages", headers=ANTH, json={"model": "claude-test", "max_tokens": 100, "messages": [
        {"role": "user", "content": text}], **kw})


def test_refusal_is_billed_and_shaped_per_provider(client, strict_sim):
    r = chat(client, "how to x [[fault:refusal]]", logprobs=True)
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] is None and choice["message"]["refusal"]
    assert choice["finish_reason"] == "stop" and r.json()["usage"]["completion_tokens"] > 0
    with client.stream("POST", "/chat/completions", json={"model": "gpt-test", "stream": True, "messages": [
            {"role": "user", "content": "y [[fault:refusal]]"}]}) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("refusal") or "" for c in chunks) == choice["message"]["refusal"]
    assert all(not c["choices"][0]["delta"].get("content") for c in chunks)
    data = message(client, "how to x [[fault:refusal]]").json()
    assert data["stop_reason"] == "refusal" and data["usage"]["output_tokens"] > 0
    stats = strict_sim.stats()
    assert stats["answered"] == 3 and stats["faults"] == {"refusal": 3}
    assert stats["completion_tokens"] > 0 and stats["cost_usd"] > 0  # a refusal is paid for


@pytest.mark.parametrize("kind,status,anth_status,anth_type,code", [
    ("overloaded", 503, 529, "overloaded_error", "service_unavailable"),
    ("context_length", 400, 400, "invalid_request_error", "context_length_exceeded"),
    ("insufficient_quota", 429, 400, "invalid_request_error", "insufficient_quota"),
    ("500", 500, 500, "api_error", None),
])
def test_error_faults_are_shaped_per_provider_and_not_billed(client, strict_sim, kind, status, anth_status,
                                                             anth_type, code):
    err = openai_error(chat(client, f"x [[fault:{kind}]]"), status)
    assert err["code"] == code
    r = message(client, f"x [[fault:{kind}]]")
    anthropic_error(r, anth_status, anth_type)
    if kind == "insufficient_quota":
        assert err["type"] == "insufficient_quota" and "retry-after" not in r.headers
        assert "credit balance" in r.json()["error"]["message"]
    stats = strict_sim.stats()
    assert stats["answered"] == 0 and stats["prompt_tokens"] == stats["completion_tokens"] == 0
    assert stats["cost_usd"] == 0 and stats["faults"] == {kind: 2}


def test_scripted_counts_work_for_new_kinds(client, strict_sim):
    codes = [message(client, "flaky [[fault:overloaded*2]]").status_code for _ in range(3)]
    assert codes == [529, 529, 200]
    assert [chat(client, "ctx [[fault:context_length*1]]").status_code for _ in range(2)] == [400, 200]
    assert strict_sim.stats()["faults"] == {"overloaded": 2, "context_length": 1}


DURATION = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d+)?s)$")


def test_rate_limit_header_modes():
    def limited(mode, anth):
        with SimulatorServer(SimulatorConfig(rpm=1, rate_limit_headers=mode)) as s, \
                httpx.Client(base_url=s.base_url) as c:
            send = (lambda: message(c, "q")) if anth else (lambda: c.post(
                "/chat/completions", json={"model": "m", "messages": USER}))
            first = send()
            assert first.status_code == 200
            r = send()
            assert r.status_code == 429
            return first.headers, r.headers, r.json()

    _, h, body = limited("retry-after", False)
    assert int(h["retry-after"]) >= 1 and int(h["retry-after-ms"]) > 1000
    wait = re.search(r"Please try again in (\S+)\. ", body["error"]["message"]).group(1)
    assert DURATION.match(wait)  # e.g. "1m0s", "3.2s", "300ms": what OpenAI's messages say
    ok, h, _ = limited("x-ratelimit", False)
    assert "retry-after" not in h and "retry-after-ms" not in h
    assert DURATION.match(h["x-ratelimit-reset-requests"]) and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-limit-requests"] == "1" and "x-ratelimit-remaining-requests" in ok
    ok, h, body = limited("x-ratelimit", True)
    reset = datetime.strptime(h["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
    reset = reset.replace(tzinfo=timezone.utc)
    assert 0 < reset.timestamp() - time.time() <= 62
    assert h["anthropic-ratelimit-requests-remaining"] == "0" and "retry-after" not in h
    assert body["error"]["type"] == "rate_limit_error" and "anthropic-ratelimit-requests-limit" in ok
    with SimulatorServer(SimulatorConfig(tpm=40, rate_limit_headers="x-ratelimit")) as s:
        statuses = []
        for _ in range(3):
            r = httpx.post(s.base_url + "/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": "a fairly long prompt " * 4}]})
            statuses.append(r.status_code)
        assert statuses[0] == 200 and statuses[-1] == 429
        assert DURATION.match(r.headers["x-ratelimit-reset-tokens"]) and r.json()["error"]["type"] == "tokens"
        assert r.headers["x-ratelimit-limit-tokens"] == "40"
    _, h, body = limited("none", False)
    assert not [k for k in h if "retry" in k.lower() or "ratelimit" in k.lower()]
    assert "Please try again in" in body["error"]["message"]  # the message still says it, as OpenAI's does


def test_go_durations():
    from dbt_pg_llm.simulator.faults import go_duration

    assert [go_duration(x) for x in (0.3, 1, 3.2, 90, 360, 0.0001)] == ["300ms", "1s", "3.2s", "1m30s", "6m0s", "1ms"]


def test_labels_system_prompt_still_works_with_strict_validation(client):
    system = f"Classify.\n{LABELS_PHRASE}yes | no"
    r = client.post("/chat/completions", json={"model": "gpt-test", "logprobs": True, "top_logprobs": 1,
                                               "messages": [{"role": "system", "content": system},
                                                            {"role": "user", "content": "yes please"}]})
    assert r.json()["choices"][0]["message"]["content"] == "yes"
