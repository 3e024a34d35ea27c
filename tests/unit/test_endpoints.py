"""check_endpoint: the request each provider gets (injected transport) and how answers are read."""
import json

import httpx

from dbt_pg_llm import ModelConfig
from dbt_pg_llm.models.endpoints import check_endpoint

KEY = "sk-ant-test-0123456789abcdef"


def test_anthropic_lists_models_with_its_headers_and_never_shows_the_key():
    seen = []

    def handler(request):
        seen.append(request)
        if request.headers.get("x-api-key") != KEY:
            return httpx.Response(401, json={"type": "error", "error": {"type": "authentication_error"}})
        return httpx.Response(200, json={"data": [{"id": "claude-3-5-haiku-latest", "type": "model"}]})

    config = ModelConfig(provider="anthropic", api_key=KEY, model_version="claude-3-5-haiku-latest")
    ok = check_endpoint("claude", config, transport=httpx.MockTransport(handler))
    assert ok.ok and str(ok) == "claude: OK: reachable, key accepted, model 'claude-3-5-haiku-latest' known"
    request = seen[0]
    assert request.method == "GET" and str(request.url) == "https://api.anthropic.com/v1/models"
    assert request.headers["anthropic-version"] and "authorization" not in request.headers

    wrong = check_endpoint("claude", config.replace(api_key="sk-ant-wrong-0123456789"),
                           transport=httpx.MockTransport(handler))
    assert not wrong.ok and "key rejected (HTTP 401" in wrong.detail and "sk-ant" not in str(wrong)


def test_openai_compatible_model_known_with_ollama_tags_and_unknown_models_listed():
    def handler(request):
        assert request.headers["authorization"] == "Bearer ollama-key-123"
        if request.method == "POST":  # the 1-token request for a model the listing does not name
            return httpx.Response(404, json={"error": {"message": "model 'mistral' not found", "code": 404}})
        return httpx.Response(200, json={"object": "list", "data": [{"id": "llama3.2:latest"}, {"id": "qwen2.5:7b"}]})

    config = ModelConfig(api_url="http://gpu:11434/v1", api_key="ollama-key-123", model_version="llama3.2")
    assert check_endpoint("local", config, transport=httpx.MockTransport(handler)).ok
    missing = check_endpoint("local", config.replace(model_version="mistral"), transport=httpx.MockTransport(handler))
    assert not missing.ok and "'mistral' is not among the endpoint's models (llama3.2:latest, qwen2.5:7b)" in missing.detail
    assert "a 1-token request to it failed (HTTP 404" in missing.detail


def test_a_model_the_listing_does_not_name_but_that_answers_is_a_warning_not_a_failure():
    """llama.cpp's llama-server lists the file it loaded and answers any model name: `dbt debug`
    said FAILED for a working setup. A 1-token request decides."""
    posts = []

    def handler(request):
        if request.method == "POST":
            posts.append(json.loads(request.content))
            return httpx.Response(200, json={"choices": [{"message": {"content": "OK"}, "finish_reason": "length"}],
                                             "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
        return httpx.Response(200, json={"object": "list", "data": [{"id": "SmolLM2-135M-Instruct.Q4_1.gguf"}]})

    config = ModelConfig(api_url="http://127.0.0.1:8080/v1", model_version="smollm2")
    check = check_endpoint("local", config, transport=httpx.MockTransport(handler))
    assert check.ok and check.warning and str(check).startswith("local: WARNING: ")
    assert "'smollm2' is not among the endpoint's models (SmolLM2-135M-Instruct.Q4_1.gguf)" in check.detail
    assert len(posts) == 1 and posts[0]["max_tokens"] == 1 and posts[0]["model"] == "smollm2"


def test_azure_lists_models_with_the_api_key_header_and_api_version():
    seen = []

    def handler(request):
        seen.append(request)
        ok = request.headers.get("api-key") == "azure-key-0123456789"
        return httpx.Response(200 if ok else 401, json={"data": [{"id": "gpt-4o-mini"}]} if ok else {})

    config = ModelConfig(provider="azure", api_url="https://res.openai.azure.com", api_key="azure-key-0123456789",
                         model_version="gpt-4o-mini", deployment="prod-mini", api_version="2024-10-21")
    ok = check_endpoint("azure_gpt", config, transport=httpx.MockTransport(handler))
    assert ok.ok and "key accepted" in ok.detail and "deployment is checked by the first request" in ok.detail
    assert str(seen[0].url) == "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
    assert "authorization" not in seen[0].headers
    bad = check_endpoint("azure_gpt", config.replace(api_key="azure-wrong-0123456789"),
                         transport=httpx.MockTransport(handler))
    assert not bad.ok and "key rejected (HTTP 401" in bad.detail and "azure-wrong" not in str(bad)
