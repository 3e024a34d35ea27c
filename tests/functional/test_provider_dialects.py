"""Each provider dialect against the simulator speaking it, over real HTTP (issue 8, point 7).

Azure OpenAI (deployment URL, ``api-version`` query, ``api-key`` header) and OpenAI-compatible local
servers that lack logprobs / json_schema (Ollama, vLLM, llama.cpp server): the simulator is told to
refuse what such a server refuses (``reject_params``), and the engine must still answer.
"""
from __future__ import annotations

import openai
import pytest

from dbt_pg_llm import ErrorKind, Model, ModelInput
from dbt_pg_llm.pg.spec import ColumnSpec
from dbt_pg_llm.simulator import SimulatorConfig

KEY = "azure-resource-key-SECRET-77"
LABELS = ["positive", "negative", "neutral"]
SCHEMA = {"type": "object", "properties": {"product": {"type": "string"}}, "required": ["product"]}
# the inputs a dbt column sends (system prompt naming the labels / the schema), as llm_enrich builds them
CLASSIFY = ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "t", "labels": LABELS, "model": "m"})
EXTRACT = ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "t", "schema": SCHEMA, "model": "m"})


@pytest.fixture
def azure_sim(simulator_factory):
    return simulator_factory(SimulatorConfig(api_key=KEY, models=("prod-4o",)))


def azure_model(sim, **extra) -> Model:
    config = {"provider": "azure", "api_url": sim.url, "deployment": "prod-4o", "model_version": "gpt-4o",
              "api_version": "2024-10-21", "api_key": KEY, "timeout_ms": 5000,
              "retry": {"max_retries": 2, "base_delay_ms": 10}}
    config.update(extra)
    return Model("azure", config)


def test_azure_deployment_answers_labels_json_and_text(azure_sim):
    model = azure_model(azure_sim)
    label = model.call(CLASSIFY.model_input("I love it"))
    assert label.ok and label.value in LABELS, label.error_message
    extracted = model.call(EXTRACT.model_input("The kettle works"))
    assert extracted.ok and set(extracted.value) == {"product"}, extracted.error_message
    text = model.call(ModelInput("Summarize: good value"))
    assert text.ok and text.text and text.tokens.prompt > 0
    assert azure_sim.stats()["requests"] == 3


def test_azure_wrong_key_and_unknown_deployment_fail_at_once_without_retries(azure_sim):
    wrong_key = azure_model(azure_sim, api_key="not-the-key-123456").call(ModelInput("hello"))
    assert wrong_key.error_kind == ErrorKind.API and wrong_key.attempts == 1
    assert "api_key" in wrong_key.error_message and "not-the-key-123456" not in wrong_key.error_message
    unknown = azure_model(azure_sim, deployment="nope").call(ModelInput("hello"))
    assert unknown.error_kind == ErrorKind.API and unknown.attempts == 1 and "404" in unknown.error_message


def test_the_official_sdks_azure_client_parses_the_simulators_azure_answers(azure_sim):
    client = openai.AzureOpenAI(azure_endpoint=azure_sim.url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    reply = client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=20)
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        openai.AzureOpenAI(azure_endpoint=azure_sim.url, api_key=KEY, api_version="2024-10-21",
                           max_retries=0).chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    with pytest.raises(openai.AuthenticationError):
        openai.AzureOpenAI(azure_endpoint=azure_sim.url, api_key="wrong-key-0000", api_version="2024-10-21",
                           max_retries=0).chat.completions.create(
            model="prod-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)


@pytest.mark.parametrize("server,refuses", [
    ("ollama", ("logprobs", "top_logprobs")),                        # no logprobs on /v1/chat/completions
    ("llama.cpp", ("logprobs", "top_logprobs", "response_format")),  # older builds: no response_format
    ("vllm", ()),                                                    # accepts both
])
def test_local_openai_compatible_servers_answer_even_without_logprobs_or_json_schema(simulator_factory, server,
                                                                                    refuses):
    sim = simulator_factory(SimulatorConfig(reject_params=refuses))
    model = Model(server, {"api_url": sim.base_url, "model_version": "llama3.2", "api_key": "local",
                           "timeout_ms": 5000, "retry": {"max_retries": 1, "base_delay_ms": 10}})
    rejected_after = []
    for _ in range(2):  # the second round must not pay for a refused parameter's 400 again
        label = model.call(CLASSIFY.model_input("I love it"))
        assert label.ok and label.value in LABELS, label.error_message
        extracted = model.call(EXTRACT.model_input("The kettle works"))
        assert extracted.ok and "product" in extracted.value, extracted.error_message
        rejected_after.append(sim.stats()["rejected"])
    stats = sim.stats()
    assert stats["requests"] - stats["rejected"] == 4  # four answers
    # each refusal is learnt once: logprobs (1), and json_schema then json_object (2) where refused
    assert rejected_after[0] == ("logprobs" in refuses) + 2 * ("response_format" in refuses)
    assert rejected_after[1] == rejected_after[0]
