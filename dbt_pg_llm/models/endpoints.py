"""Check a model's endpoint without paying: reachable, key accepted, model known (for `dbt debug`).

One free GET per model, on the provider's model listing:

* OpenAI-compatible (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, the simulator): ``GET {api_url}/models``
  with ``Authorization: Bearer <key>``; the model is known if ``model_version`` is one of ``data[].id``.
* Anthropic: ``GET {api_url}/models`` (``/v1/models``) with ``x-api-key`` and ``anthropic-version``.
* Azure OpenAI: ``GET {api_url}/openai/models?api-version=...`` with ``api-key``: reachable and key
  accepted. Azure lists the resource's models, not its deployments, so the deployment itself is
  only checked by the first real request (said in the result).

The headers are the provider's own (``provider_for(config).headers()``), so the check sends the key
exactly as a real call would. Results never contain the key: messages are built from the status
code and the model names, and go through ``redact``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import redact
from ..urls import endpoint, redact_url, split_credentials

__all__ = ["EndpointCheck", "check_endpoint"]


@dataclass(frozen=True)
class EndpointCheck:
    model: str          # the name in the profile
    ok: bool
    detail: str         # one sentence: what was found, or what is wrong and how to fix it
    warning: bool = False  # ok, but worth a look (a model the listing does not name answered anyway)

    def __str__(self) -> str:
        return f"{self.model}: {'FAILED' if not self.ok else 'WARNING' if self.warning else 'OK'}: {self.detail}"


def _request(config: Any, name: str) -> tuple[str, dict[str, str]]:
    from .providers import provider_for

    headers = {k: v for k, v in provider_for(config, name).wire_headers().items() if k.lower() != "content-type"}
    base = config.base_url or ""
    if config.provider == "azure":
        url = endpoint(base, "/openai/models", {"api-version": getattr(config, "api_version", None) or ""})
    else:
        url = endpoint(base, "/models")  # a query in api_url (e.g. ?key=) stays on the wire, after the path
    return split_credentials(url)[0], headers  # user:password@ travels as the Basic header


def _listed(data: Any) -> list[str]:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        items = data.get("models") if isinstance(data, dict) else None  # Ollama's native /api/tags shape
    return [str(i.get("id") or i.get("name")) for i in items or [] if isinstance(i, dict)]


def _known(version: str, listed: list[str]) -> bool:
    # Ollama lists "llama3.2:latest" for a model asked for as "llama3.2"
    return version in listed or f"{version}:latest" in listed


def check_endpoint(name: str, config: Any, *, timeout_s: float = 10.0,
                   transport: httpx.BaseTransport | None = None) -> EndpointCheck:
    """Check one model (a ModelConfig). Never raises for what the endpoint does; never pays."""
    url, headers = _request(config, name)
    shown = redact_url(url)  # what `dbt debug` prints: no userinfo, no query values
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            response = client.get(url, headers=headers)
    except httpx.TimeoutException:
        return EndpointCheck(name, False, f"unreachable: no answer from {shown} within {timeout_s:g}s")
    except httpx.HTTPError as exc:
        return EndpointCheck(name, False, f"unreachable: {shown}: {type(exc).__name__}: "
                                          f"{redact(str(exc), [config.api_key or ''])[:200]}; check api_url")
    status = response.status_code
    if status in (401, 403):
        return EndpointCheck(name, False, f"key rejected (HTTP {status} from {shown}); check the model's api_key")
    if config.provider == "azure":
        if status >= 300:
            return EndpointCheck(name, False, f"HTTP {status} from {shown}; check api_url and api_version")
        return EndpointCheck(name, True, "reachable, key accepted (Azure lists models, not deployments: "
                                         "the deployment is checked by the first request)")
    if status >= 300:
        return EndpointCheck(name, False, f"HTTP {status} from {shown}; check api_url (the base URL, e.g. "
                                          "https://api.openai.com/v1)")
    try:
        listed = _listed(response.json())
    except ValueError:
        return EndpointCheck(name, False, f"{shown} did not answer JSON; check api_url")
    if not _known(config.model_version, listed):
        some = ", ".join(sorted(listed)[:10]) or "none"
        missing = (f"reachable, key accepted, but model_version {config.model_version!r} is not among the "
                   f"endpoint's models ({some})")
        # some servers answer any model name (llama.cpp's llama-server lists the file it loaded):
        # only a real request tells; a 1-token one, the only paid part of the check
        answered, why = _one_token_request(name, config, timeout_s, transport)
        if answered:
            return EndpointCheck(name, True, f"{missing}; a 1-token request to it was answered, so the server "
                                             "serves it under another name (set model_version to a listed one "
                                             "to silence this)", warning=True)
        return EndpointCheck(name, False, f"{missing}, and a 1-token request to it failed ({why}); fix model_version")
    return EndpointCheck(name, True, f"reachable, key accepted, model {config.model_version!r} known")


def _one_token_request(name: str, config: Any, timeout_s: float,
                       transport: httpx.BaseTransport | None) -> tuple[bool, str]:
    """Send the provider's own request for a 1-token answer; (answered, why not)."""
    import json

    from .model_io import ModelInput
    from .providers import provider_for

    provider = provider_for(config, name)
    body, _ = provider.build_body(ModelInput("Say OK.", max_tokens=1, temperature=0.0))
    url = split_credentials(provider.endpoint_url(config.base_url or ""))[0]
    try:
        with httpx.Client(timeout=timeout_s, transport=transport) as client:
            response = client.post(url, content=json.dumps(body).encode(), headers=provider.wire_headers())
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {redact(str(exc), [config.api_key or ''])[:160]}"
    if response.status_code >= 300:
        return False, f"HTTP {response.status_code}: {redact(response.text, [config.api_key or ''])[:160]}"
    return True, ""
