"""ModelConfig: everything needed to call one model, and its validation.

``validate()`` reports every problem at once, each naming the key and the fix, and raises
ConfigError. The API key never appears in repr/str (it is also registered for redaction).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable
from urllib.parse import urlparse

from ..errors import ConfigError, register_secret
from ..urls import has_userinfo, redact_url, url_secrets
from .batch_policy import BATCH_PROVIDERS, BatchPolicy
from .retry import RetryPolicy
from .tokens import tokenizer_problems

__all__ = ["ModelConfig", "PROVIDERS", "check_keys"]

PROVIDERS = ("openai", "anthropic", "azure")
_DEFAULT_URLS = {"anthropic": "https://api.anthropic.com/v1"}
LOGPROBS_MODES = ("auto", "always", "never")
STRUCTURED_MODES = {"openai": ("auto", "json_schema", "json_object", "prompt"),
                    "azure": ("auto", "json_schema", "json_object", "prompt"),
                    "anthropic": ("auto", "tool", "prompt")}


def check_keys(data: dict, allowed: Iterable[str], path: str) -> None:
    """Raise ConfigError naming every unknown key, with the closest known key as the fix."""
    allowed = list(allowed)
    problems = []
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
            problems.append(f"{path}.{key}: unknown key; {hint}")
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class ModelConfig:
    provider: str = "openai"
    api_url: str | None = None  # base URL, as the OpenAI SDK's base_url, e.g. https://api.openai.com/v1
    api_key: str | None = field(default=None, repr=False)
    model_version: str | None = None  # the provider's model id, e.g. gpt-4o-mini
    timeout_ms: int = 30_000
    max_tokens: int = 256
    temperature: float = 0.0
    stream: bool = False
    max_concurrency: int = 16
    batch_size: int = 1  # short prompts packed per request (batch.py); a transport detail, not in the key
    rpm: int | None = None
    tpm: int | None = None
    cost_per_1k_input_tokens: float = 0.0
    cost_per_1k_output_tokens: float = 0.0
    # provider prompt caching (pricing.py): unset = cached reads at the input price (conservative),
    # cache writes (Anthropic) at 1.25x it; the prefix length from which Anthropic requests mark it
    cost_per_1k_cached_input_tokens: float | None = None
    cost_per_1k_cache_write_tokens: float | None = None
    cache_control_min_tokens: int | None = None
    enabled: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    fallbacks: tuple[str, ...] = ()
    batch: BatchPolicy = field(default_factory=BatchPolicy)  # provider batch APIs for big backfills
    logprobs: str = "auto"  # auto: only when a confidence is wanted, dropped after a 400 naming it
    structured_output: str = "auto"  # how JSON/labels are asked for; see providers/features.py
    tokenizer: str = "auto"  # how the spend cap and the estimate bound this model's tokens (tokens.py)
    deployment: str | None = None  # azure: the deployment name (default: model_version)
    api_version: str | None = None  # azure: the api-version query parameter, e.g. 2024-10-21

    def __post_init__(self):
        register_secret(self.api_key)
        for secret in url_secrets(self.api_url):  # user:password@ and ?key=... of the URL
            register_secret(secret)

    def __repr__(self) -> str:
        def shown_value(name: str) -> str:
            if name == "api_key" and self.api_key:
                return "***"
            if name == "api_url" and self.api_url:
                return repr(redact_url(self.api_url))
            return repr(getattr(self, name))

        shown = ", ".join(f"{f.name}={shown_value(f.name)}" for f in fields(self))
        return f"ModelConfig({shown})"

    __str__ = __repr__

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | "ModelConfig", path: str = "model") -> "ModelConfig":
        """Build from a mapping (e.g. profiles.yml), naming unknown keys and bad types by key path."""
        if isinstance(data, ModelConfig):
            return data
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: expected a mapping of model settings, got {type(data).__name__}"])
        names = [f.name for f in fields(cls)]
        check_keys(data, names, path)
        kwargs: dict[str, Any] = dict(data)
        problems = []
        for name, parse in (("retry", RetryPolicy.from_dict), ("batch", BatchPolicy.from_dict)):
            if name not in kwargs:
                continue
            try:
                kwargs[name] = parse(kwargs[name], f"{path}.{name}")
            except ConfigError as exc:
                problems.extend(exc.problems)
                kwargs.pop(name)
            except (TypeError, ValueError) as exc:
                problems.append(f"{path}.{name}: {exc}")
                kwargs.pop(name)
        if "fallbacks" in kwargs:
            fb = kwargs["fallbacks"]
            if isinstance(fb, str):
                fb = [fb]
            if not isinstance(fb, (list, tuple)):
                problems.append(f"{path}.fallbacks: expected a list of model names, got {type(fb).__name__}")
                fb = []
            kwargs["fallbacks"] = tuple(str(x) for x in fb)
        for name in ("timeout_ms", "max_tokens", "max_concurrency", "batch_size", "rpm", "tpm",
                     "cache_control_min_tokens"):
            kwargs[name] = _coerce(kwargs, name, int, path, problems)
        for name in ("temperature", "cost_per_1k_input_tokens", "cost_per_1k_output_tokens",
                     "cost_per_1k_cached_input_tokens", "cost_per_1k_cache_write_tokens"):
            kwargs[name] = _coerce(kwargs, name, float, path, problems)
        kwargs = {k: v for k, v in kwargs.items() if v is not _MISSING}
        config = cls(**kwargs)
        problems.extend(config.problems(path))
        if problems:
            raise ConfigError(problems)
        return config

    def to_dict(self, include_secret: bool = False) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["retry"] = {k: getattr(self.retry, k) for k in RetryPolicy.FIELDS}
        out["retry"]["retryable_errors"] = sorted(k.value for k in self.retry.retryable_errors)
        out["fallbacks"] = list(self.fallbacks)
        out["batch"] = {f.name: getattr(self.batch, f.name) for f in fields(BatchPolicy)}
        if not include_secret:
            out["api_key"] = "***" if self.api_key else None
            out["api_url"] = redact_url(self.api_url) if self.api_url else self.api_url  # user:password@, ?key=
        return out

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    @property
    def base_url(self) -> str | None:
        return self.api_url or _DEFAULT_URLS.get(self.provider)

    # -- validation ------------------------------------------------------------------------------
    def problems(self, path: str = "model") -> list[str]:
        out: list[str] = []
        if self.provider not in PROVIDERS:
            out.append(f"{path}.provider: unknown provider {self.provider!r}; use one of {', '.join(PROVIDERS)} "
                       "('openai' covers any OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp, LiteLLM)")
        if not self.base_url:
            out.append(f"{path}.api_url: missing; set the endpoint's base URL, e.g. https://api.openai.com/v1")
        else:
            parsed = urlparse(self.base_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                out.append(f"{path}.api_url: {self.base_url!r} is not an http(s) URL; "
                           "give a base URL like http://localhost:11434/v1")
            elif self.provider == "azure" and "/openai/deployments" in parsed.path:
                out.append(f"{path}.api_url: give the resource URL only (e.g. https://<resource>.openai.azure.com); "
                           "the deployment goes in 'deployment' and the provider builds the path")
            elif parsed.path.rstrip("/").endswith("/chat/completions") or parsed.path.rstrip("/").endswith("/messages"):
                out.append(f"{path}.api_url: give the base URL without the endpoint path "
                           f"(e.g. {redact_url(self.base_url).rsplit('/', 2)[0]}); the provider appends it")
            elif has_userinfo(self.base_url) and self.api_key and self.provider == "openai":
                # both would be the Authorization header (Basic and Bearer); a request carries one
                out.append(f"{path}.api_url: carries a user:password@ (sent as HTTP basic auth) while api_key is "
                           "set (sent as 'Authorization: Bearer'); a request has one Authorization header: "
                           "remove one of them (a gateway's key can often go in the query instead, ?key=...)")
        if not self.model_version:
            out.append(f"{path}.model_version: missing; set the provider's model id, e.g. gpt-4o-mini")
        if not isinstance(self.timeout_ms, int) or self.timeout_ms <= 0:
            out.append(f"{path}.timeout_ms: {self.timeout_ms!r} must be a positive number of milliseconds, e.g. 30000")
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            out.append(f"{path}.max_tokens: {self.max_tokens!r} must be a positive integer, e.g. 256")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            out.append(f"{path}.temperature: {self.temperature!r} is out of range; use a number from 0 to 2")
        elif self.provider == "anthropic" and self.temperature > 1:  # Anthropic answers 400 above 1
            out.append(f"{path}.temperature: {self.temperature!r} is out of range for provider 'anthropic'; "
                       "use a number from 0 to 1")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency <= 0:
            out.append(f"{path}.max_concurrency: {self.max_concurrency!r} must be a positive integer, e.g. 16")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            out.append(f"{path}.batch_size: {self.batch_size!r} must be a whole number >= 1, e.g. 16 to pack 16 short "
                       "prompts per request (1 = one request per prompt)")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                out.append(f"{path}.{name}: {value!r} must be a positive integer, or omitted for no limit")
        for name in ("cost_per_1k_input_tokens", "cost_per_1k_output_tokens"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                out.append(f"{path}.{name}: {value!r} must be a number >= 0 (US dollars per 1,000 tokens)")
        for name in ("cost_per_1k_cached_input_tokens", "cost_per_1k_cache_write_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                out.append(f"{path}.{name}: {value!r} must be a number >= 0 (US dollars per 1,000 tokens), or "
                           "unset (cached reads are then priced as input tokens, cache writes at 1.25x them)")
        value = self.cache_control_min_tokens
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(f"{path}.cache_control_min_tokens: {value!r} must be a whole number of tokens >= 0 "
                           "(0 marks every shared prefix), or unset for Anthropic's documented minimum")
            elif self.provider != "anthropic":
                out.append(f"{path}.cache_control_min_tokens: only used by provider 'anthropic' (OpenAI caches "
                           "prefixes automatically); remove it")
        if not isinstance(self.enabled, bool):
            out.append(f"{path}.enabled: {self.enabled!r} must be true or false")
        if not isinstance(self.retry, RetryPolicy):
            out.append(f"{path}.retry: must be a mapping of retry settings")
        else:
            out.extend(self.retry.problems(f"{path}.retry"))
        if not isinstance(self.batch, BatchPolicy):
            out.append(f"{path}.batch: must be a mapping like {{enabled: true, min_keys: 1000, max_wait_s: 0}}")
        else:
            out.extend(self.batch.problems(f"{path}.batch"))
            if self.batch.enabled is True and self.provider not in BATCH_PROVIDERS:
                out.append(f"{path}.batch.enabled: provider {self.provider!r} has no batch API support here; "
                           f"set enabled: false, or use provider {' or '.join(BATCH_PROVIDERS)}")
        if self.logprobs not in LOGPROBS_MODES:
            out.append(f"{path}.logprobs: {self.logprobs!r} is not a mode; use auto (ask only when a confidence "
                       "is used, stop after the server rejects it), always or never")
        modes = STRUCTURED_MODES.get(self.provider, STRUCTURED_MODES["openai"])
        if self.structured_output not in modes:
            out.append(f"{path}.structured_output: {self.structured_output!r} is not available for provider "
                       f"{self.provider!r}; use one of {', '.join(modes)}")
        out.extend(tokenizer_problems(self.tokenizer, self.provider, path))
        if self.provider == "azure":
            if not self.api_version:
                out.append(f"{path}.api_version: missing; Azure OpenAI needs the api-version query parameter, "
                           "e.g. api_version: '2024-10-21'")
        else:
            for name in ("deployment", "api_version"):
                if getattr(self, name) is not None:
                    out.append(f"{path}.{name}: only used by provider 'azure'; remove it or set provider: azure")
        return out

    def validate(self, path: str = "model") -> "ModelConfig":
        problems = self.problems(path)
        if problems:
            raise ConfigError(problems)
        return self


_MISSING = object()


def _coerce(data: dict, name: str, kind: type, path: str, problems: list[str]):
    if name not in data:
        return _MISSING
    value = data[name]
    if value is None or isinstance(value, bool):
        return value
    try:
        coerced = kind(value)
        if kind is int and isinstance(value, float) and value != int(value):
            raise ValueError
        return coerced
    except (TypeError, ValueError):
        problems.append(f"{path}.{name}: {value!r} is not a {'whole number' if kind is int else 'number'}")
        return _MISSING
