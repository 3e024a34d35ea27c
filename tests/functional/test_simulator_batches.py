"""The simulator's batch APIs in the providers' wire shapes, over real HTTP (httpx as a client would)."""
from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from dbt_pg_llm.simulator import SimulatorConfig, SimulatorServer
from dbt_pg_llm.simulator.answers import LABELS_PHRASE

pytestmark = pytest.mark.functional


def chat(prompt: str) -> dict:
    return {"model": "sim-small", "max_tokens": 20, "messages": [
        {"role": "system", "content": LABELS_PHRASE + "yes | no"}, {"role": "user", "content": prompt}]}


def openai_jsonl(prompts) -> bytes:
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": chat(p)}) + "\n" for i, p in enumerate(prompts)).encode()


def test_openai_batch_lifecycle_files_and_billing_at_the_batch_price():
    config = SimulatorConfig(batch_delay_s=0.3, cost_per_1k_input=1.0, cost_per_1k_output=2.0)
    with SimulatorServer(config) as s, httpx.Client(base_url=s.base_url) as c:
        f = c.post("/files", data={"purpose": "batch"},
                   files={"file": ("in.jsonl", openai_jsonl(["yes it is", "no way", "boom [[fault:500]]"]))}).json()
        assert f["object"] == "file" and f["purpose"] == "batch" and f["bytes"] > 0
        b = c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h", "metadata": {"pg_llm_batch": "u1"}}).json()
        assert b["object"] == "batch" and b["status"] == "validating" and b["metadata"] == {"pg_llm_batch": "u1"}
        assert c.get(f"/batches/{b['id']}").json()["status"] == "in_progress"
        listed = c.get("/batches", params={"limit": 10}).json()
        assert listed["object"] == "list" and listed["data"][0]["id"] == b["id"] and listed["has_more"] is False
        time.sleep(0.35)
        done = c.get(f"/batches/{b['id']}").json()
        assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        assert done["completed_at"] and done["output_file_id"] and done["error_file_id"]
        out = [json.loads(x) for x in c.get(f"/files/{done['output_file_id']}/content").text.splitlines()]
        assert {o["custom_id"] for o in out} == {"r0", "r1"}
        assert out[0]["response"]["status_code"] == 200 and out[0]["response"]["body"]["object"] == "chat.completion"
        err = [json.loads(x) for x in c.get(f"/files/{done['error_file_id']}/content").text.splitlines()]
        assert err[0]["custom_id"] == "r2" and err[0]["response"]["status_code"] == 500
        stats = s.stats()
        usage = [o["response"]["body"]["usage"] for o in out]
        list_price = sum(u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0 for u in usage) / 1000
        assert stats["batch_requests"] == 2 and stats["batch_errors"] == 1 and stats["requests"] == 0
        assert stats["batch_cost_usd"] == pytest.approx(list_price * 0.5) == pytest.approx(stats["cost_usd"])


def test_openai_expiry_cancel_and_bad_input():
    with SimulatorServer(SimulatorConfig(batch_expire_rate=1.0)) as s, httpx.Client(base_url=s.base_url) as c:
        def create(lines: bytes) -> dict:
            f = c.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", lines)}).json()
            return c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"}).json()

        expired = c.get(f"/batches/{create(openai_jsonl(['a', 'b']))['id']}").json()
        assert expired["status"] == "expired" and expired["output_file_id"] is None
        lines = c.get(f"/files/{expired['error_file_id']}/content").text.splitlines()
        assert [json.loads(x)["error"]["code"] for x in lines] == ["batch_expired", "batch_expired"]
        s.configure(batch_expire_rate=0.0, batch_delay_s=3600)
        slow = create(openai_jsonl(["c"]))
        assert c.post(f"/batches/{slow['id']}/cancel").json()["status"] == "cancelling"
        assert c.get(f"/batches/{slow['id']}").json()["status"] == "cancelled"
        assert create(b"not json\n")["status"] == "failed"


def test_anthropic_message_batches_and_results_jsonl():
    with SimulatorServer(SimulatorConfig(batch_delay_s=0.2)) as s, httpx.Client(base_url=s.base_url) as c:
        params = {"model": "claude-3-5-haiku-latest", "max_tokens": 20, "system": LABELS_PHRASE + "yes | no",
                  "messages": [{"role": "user", "content": "yes"}]}
        b = c.post("/messages/batches", json={"requests": [
            {"custom_id": "k1", "params": params},
            {"custom_id": "k2", "params": {**params, "messages": [{"role": "user", "content": "[[fault:400]]"}]}}]}).json()
        assert b["type"] == "message_batch" and b["processing_status"] == "in_progress" and b["results_url"] is None
        assert b["request_counts"]["processing"] == 2
        assert c.get(f"/messages/batches/{b['id']}/results").status_code == 400
        assert c.post("/messages/batches", json={"requests": [{"custom_id": "bad id!", "params": params}]}).status_code == 400
        time.sleep(0.25)
        ended = c.get(f"/messages/batches/{b['id']}").json()
        assert ended["processing_status"] == "ended" and ended["ended_at"]
        assert ended["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 0}
        lines = {x["custom_id"]: x["result"] for x in map(json.loads, c.get(ended["results_url"]).text.splitlines())}
        assert lines["k1"]["type"] == "succeeded" and lines["k1"]["message"]["content"][0]["text"] == "yes"
        assert lines["k2"]["type"] == "errored" and lines["k2"]["error"]["error"]["type"] == "invalid_request_error"
        assert c.get("/messages/batches").json()["data"][0]["id"] == b["id"]
        s.configure(batch_delay_s=3600)
        slow = c.post("/messages/batches", json={"requests": [{"custom_id": "k3", "params": params}]}).json()
        assert c.post(f"/messages/batches/{slow['id']}/cancel").json()["processing_status"] == "canceling"
        result = json.loads(c.get(f"/messages/batches/{slow['id']}/results").text)
        assert result == {"custom_id": "k3", "result": {"type": "canceled"}}


def test_batch_knobs_are_validated_and_reach_the_command_line():
    from dbt_pg_llm.simulator.__main__ import build_parser, config_from_args

    with pytest.raises(ValueError, match="batch_expire_rate"):
        SimulatorConfig(batch_expire_rate=2)
    config = config_from_args(build_parser().parse_args(["--batch-delay-s", "5", "--batch-error-rate", "0.1",
                                                         "--batch-expire-rate", "0.2", "--batch-discount", "0.4"]))
    assert (config.batch_delay_s, config.batch_error_rate, config.batch_expire_rate, config.batch_discount) == \
        (5.0, 0.1, 0.2, 0.4)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_engine_batch_clients_page_through_batches_and_find_one_by_its_idempotency_id(provider):
    from dbt_pg_llm import ModelInput
    from dbt_pg_llm.models.batch_api import client_for
    from dbt_pg_llm.models.config import ModelConfig

    with SimulatorServer() as s:
        client = client_for(ModelConfig.from_dict({"provider": provider, "api_url": s.base_url,
                                                   "model_version": "sim-small"}), "sim")
        try:
            client.page_size = 2
            submitted = []
            for n in range(3):
                keys = [f"{'k' * 8}{n}{i}" for i in range(n + 1)]
                items = [(k, client.request_body(ModelInput(f"prompt {k}"))) for k in keys]
                (chunk,) = client.chunks(items)
                submitted.append((client.submit(f"tag{n}", chunk), set(keys)))
            listed = list(client.list(since=0))
            assert [i.id for i in listed] == [info.id for info, _ in reversed(submitted)]
            info, keys = submitted[1]
            found = client.find("tag1", since=0, count=2, custom_ids=keys, known_ids={submitted[2][0].id})
            assert found is not None and found.id == info.id
            assert client.find("nope", since=0, count=9, custom_ids=set()) is None
            lines = list(client.results(client.retrieve(info.id)))
            assert {line.custom_id for line in lines} == keys and all(line.body for line in lines)
        finally:
            client.close()


def test_batch_endpoints_check_the_api_key_in_each_protocol_shape():
    with SimulatorServer(SimulatorConfig(api_key="sk-batch-key")) as s, httpx.Client(base_url=s.base_url) as c:
        denied = c.get("/batches")
        assert denied.status_code == 401 and denied.json()["error"]["message"].startswith("Incorrect API key")
        assert c.get("/messages/batches").json()["error"]["type"] == "authentication_error"
        assert c.get("/batches", headers={"Authorization": "Bearer sk-batch-key"}).json()["object"] == "list"
        assert c.get("/messages/batches", headers={"x-api-key": "sk-batch-key"}).json()["data"] == []
        assert s.stats()["unauthorized"] == 2


def test_openai_batch_of_embeddings_lines_and_anthropic_refuses_them():
    """/v1/embeddings lines: the live endpoint's answer (base64, dimensions, usage) at the batch price,
    a bad line errored alone; an embeddings line is refused by Message Batches with Anthropic's error."""
    config = SimulatorConfig(batch_delay_s=0.2, cost_per_1k_input=1.0)
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": [t], "dimensions": 8, "encoding_format": "base64"}}
             for i, t in enumerate(["red apple", "green apple", ""])]
    with SimulatorServer(config) as s, httpx.Client(base_url=s.base_url) as c:
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        f = c.post("/files", data={"purpose": "batch"}, files={"file": ("e.jsonl", data)}).json()
        wrong = c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"}).json()
        assert wrong["status"] == "failed" and wrong["errors"]["data"][0]["code"] == "invalid_url"
        b = c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/embeddings",
                                     "completion_window": "24h"}).json()
        assert b["endpoint"] == "/v1/embeddings"
        time.sleep(0.25)
        done = c.get(f"/batches/{b['id']}").json()
        assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        out = {o["custom_id"]: o for o in map(json.loads, c.get(f"/files/{done['output_file_id']}/content").text.splitlines())}
        body = out["e0"]["response"]["body"]
        assert body["object"] == "list" and len(base64.b64decode(body["data"][0]["embedding"])) == 8 * 4
        live = c.post("/embeddings", json=lines[0]["body"]).json()
        assert live["data"][0]["embedding"] == body["data"][0]["embedding"]  # same vector as the live call
        err = json.loads(c.get(f"/files/{done['error_file_id']}/content").text.splitlines()[0])
        assert err["custom_id"] == "e2" and err["response"]["status_code"] == 400
        stats = s.stats()
        tokens = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out.values())
        assert stats["batch_requests"] == 2 and stats["batch_cost_usd"] == pytest.approx(tokens / 1000 * 0.5)
        refused = c.post("/messages/batches", json={"requests": [{"custom_id": "e0", "params": lines[0]["body"]}]})
        assert refused.status_code == 400 and refused.json()["type"] == "error"
        assert "params.messages" in refused.json()["error"]["message"]
