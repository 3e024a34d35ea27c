"""LlmSettings: the ``llm:`` block of a dbt profile (or any dict), validated in one pass.

Every problem is reported at once with its key path and the fix, e.g.
``llm.models.gpt.temperature: 3.0 is out of range; use a number from 0 to 2``.

A ``models:`` entry with a ``strategy:`` key is a strategy model (cascade / vote / route over real
models, see ``strategy.py``): it is kept in ``settings.strategies`` (``settings.models`` holds only
real models' ModelConfig), may be the ``default_model``, and is used by name like a model.
``config_for(name)`` gives the config of any name (the cache key is computed from it).
``build_engine(settings)`` turns it into an Engine with models, strategies, failover chains and the journal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RegistryError
from ..urls import redact_url
from .alerts import AlertThresholds
from .config import ModelConfig, check_keys
from .strategy import InferenceStrategy
from .strategy_model import StrategyConfig, StrategyModel
from .webhook import AlertWebhook

__all__ = ["LlmSettings", "build_engine", "ON_ERROR_MODES", "ON_BUDGET_MODES"]

ON_ERROR_MODES = ("null", "fail")  # or any other literal: the default value for failed rows
ON_BUDGET_MODES = ("warn", "fail")  # when max_cost_usd_per_run stopped requests: a warning, or the model fails
_PG_IDENTIFIER = "abcdefghijklmnopqrstuvwxyz0123456789_"


@dataclass(frozen=True)
class LlmSettings:
    models: dict[str, ModelConfig] = field(default_factory=dict)
    default_model: str | None = None
    audit_schema: str = "llm_audit"
    cache_ttl_days: float | None = None  # None = cached answers never expire
    audit_retention_days: int | None = None
    max_cost_usd_per_run: float | None = None  # a hard cap: requests reserve their worst case (spend.py)
    on_budget: str = "warn"  # the cap stopped requests: "warn" (rows NULL, a warning) or "fail" the model
    journal_dir: str | None = None  # None = the user's cache dir (not target/: it must survive `dbt clean`)
    on_error: Any = "null"
    max_error_rate: float = 0.5  # a column with a larger share of failed/skipped keys fails its model
    alerts: AlertThresholds = field(default_factory=AlertThresholds)  # when to write llm_alerts rows
    strategies: dict[str, InferenceStrategy] = field(default_factory=dict)  # from models: entries with strategy:
    alert_webhook: AlertWebhook | None = None  # from alerts.webhook_url: where new alerts are POSTed
    # A run's claims on keys it is requesting are taken over by another run when their heartbeat
    # (refreshed every claim_timeout_s / 4 while the run works) is older than this.
    claim_timeout_s: float = 120.0
    # llm_results keeps each answer's prompt text (provenance); false keeps only its key (a hash)
    store_prompts: bool = True

    FIELDS = ("models", "default_model", "audit_schema", "cache_ttl_days", "audit_retention_days",
              "max_cost_usd_per_run", "on_budget", "journal_dir", "on_error", "max_error_rate", "alerts",
              "claim_timeout_s", "store_prompts")

    @classmethod
    def from_dict(cls, data: dict | None, path: str = "llm") -> "LlmSettings":
        data = dict(data or {})
        problems: list[str] = []
        try:
            check_keys(data, cls.FIELDS, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            data = {k: v for k, v in data.items() if k in cls.FIELDS}
        models: dict[str, ModelConfig] = {}
        raw_models = data.pop("models", None) or {}
        if not isinstance(raw_models, dict):
            problems.append(f"{path}.models: expected a mapping of model name -> settings")
            raw_models = {}
        strategy_names = {str(n) for n, raw in raw_models.items() if isinstance(raw, dict) and "strategy" in raw}
        real_names = {str(n) for n in raw_models} - strategy_names
        strategies: dict[str, InferenceStrategy] = {}
        for name, raw in raw_models.items():
            try:
                if str(name) in strategy_names:
                    strategies[str(name)] = InferenceStrategy.from_dict(raw, f"{path}.models.{name}", real_names,
                                                                        strategy_names)
                else:
                    models[str(name)] = ModelConfig.from_dict(raw, f"{path}.models.{name}")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if "alerts" in data:
            raw_alerts = data.pop("alerts")
            if isinstance(raw_alerts, dict):
                try:
                    data["alert_webhook"] = AlertWebhook.from_alerts_block(raw_alerts, f"{path}.alerts")
                except ConfigError as exc:
                    problems.extend(exc.problems)
                raw_alerts = {k: v for k, v in raw_alerts.items() if k not in AlertWebhook.KEYS}
            try:
                data["alerts"] = _thresholds(raw_alerts, f"{path}.alerts")
            except ConfigError as exc:
                problems.extend(exc.problems)
        settings = cls(models=models, strategies=strategies, **data)
        problems.extend(settings.problems(path, known_models=real_names, known_strategies=strategy_names))
        if problems:
            raise ConfigError(problems, context=f"'{path}' settings")
        return settings

    def problems(self, path: str = "llm", known_models: set | None = None,
                 known_strategies: set | None = None) -> list[str]:
        """``known_models`` / ``known_strategies``: names defined even if their entry was invalid."""
        real = set(self.models) | set(known_models or ())
        strategies = set(self.strategies) | set(known_strategies or ())
        names = real | strategies
        out = []
        if self.default_model is not None and self.default_model not in names:
            out.append(f"{path}.default_model: {self.default_model!r} is not one of the models "
                       f"({', '.join(sorted(names)) or 'none defined'}); define it under {path}.models")
        if self.default_model is None and len(names) > 1:
            out.append(f"{path}.default_model: missing; with several models, name the one macros use by default")
        schema = self.audit_schema
        if not isinstance(schema, str) or not schema or any(c not in _PG_IDENTIFIER for c in schema) \
                or schema[0].isdigit():
            out.append(f"{path}.audit_schema: {schema!r} must be a lowercase SQL identifier, e.g. llm_audit")
        elif schema.startswith("pg_"):
            out.append(f"{path}.audit_schema: {schema!r} starts with 'pg_', which Postgres reserves; use e.g. llm_audit")
        for key in ("cache_ttl_days", "audit_retention_days", "max_cost_usd_per_run"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                out.append(f"{path}.{key}: {value!r} must be a positive number, or omitted")
        if self.on_budget not in ON_BUDGET_MODES:
            out.append(f"{path}.on_budget: {self.on_budget!r} is not a mode; use 'warn' (keys over the "
                       "max_cost_usd_per_run cap get NULL and a warning) or 'fail' (the model fails)")
        timeout = self.claim_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 86400:
            out.append(f"{path}.claim_timeout_s: {timeout!r} must be a number of seconds from 1 to 86400 "
                       "(default 120): how long another run waits for a run that stopped making progress "
                       "before taking over its keys")
        rate = self.max_error_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            out.append(f"{path}.max_error_rate: {rate!r} must be a share from 0 to 1 (e.g. 0.5: a column fails "
                       "its model when more than half of its keys fail; 1: never)")
        if not isinstance(self.store_prompts, bool):
            out.append(f"{path}.store_prompts: {self.store_prompts!r} must be true (llm_results keeps each prompt, "
                       "the default) or false (only the key, a hash of the prompt)")
        for name, config in self.models.items():
            for backup in config.fallbacks:
                if backup in strategies:  # a strategy may call this very model: a cycle
                    out.append(f"{path}.models.{name}.fallbacks: {backup!r} is a strategy; fall back to real models")
                elif backup not in names:
                    out.append(f"{path}.models.{name}.fallbacks: {backup!r} is not a defined model")
                elif backup == name:
                    out.append(f"{path}.models.{name}.fallbacks: a model cannot fall back to itself")
        return out

    def identity(self) -> str:
        """A hash of everything that shapes an Engine built from these settings, API keys included
        (a changed key must not reuse an engine holding the old one). Never printed."""
        import hashlib
        import json

        data = {name: getattr(self, name) for name in self.FIELDS if name != "models"}
        data["models"] = {n: c.to_dict(include_secret=True) for n, c in self.models.items()}
        data["strategies"] = {n: repr(s) for n, s in self.strategies.items()}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    @property
    def model_for_default(self) -> str | None:
        if self.default_model:
            return self.default_model
        return next(iter(self.models), None)

    def config_for(self, name: str) -> ModelConfig | StrategyConfig:
        """The config of a model or strategy name (what its cache key is computed from).

        RegistryError (a KeyError) for an unknown name, listing every defined name."""
        if name in self.models:
            return self.models[name]
        if name in self.strategies:
            return StrategyConfig.of(self.strategies[name], self.models, name)
        known = ", ".join(sorted({*self.models, *self.strategies})) or "(none)"
        raise RegistryError(f"unknown model {name!r}; models configured under llm.models: {known}")

    def journal_path(self) -> Path:
        if self.journal_dir:
            return Path(self.journal_dir).expanduser()
        import platformdirs

        return Path(platformdirs.user_cache_dir("dbt-pg-llm")) / "journal"

    def redacted(self) -> dict:
        """A printable summary (no API keys): for `dbt debug` and logs."""
        out = {"default_model": self.model_for_default, "audit_schema": self.audit_schema,
               "models": {n: {"provider": c.provider, "model_version": c.model_version,
                              "api_url": redact_url(c.base_url or "")}  # no user:password@, no ?key= value
                          for n, c in self.models.items()}}
        if self.strategies:
            out["strategies"] = {n: {"strategy": s.kind, "models": list(s.members)}
                                 for n, s in self.strategies.items()}
        return out


def _thresholds(data, path: str) -> AlertThresholds:
    if isinstance(data, AlertThresholds):
        return data
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping, e.g. {{max_error_rate: 0.2, max_avg_latency_ms: 10000}}"])
    names = ("max_error_rate", "max_avg_latency_ms", "max_cost_usd", "min_requests", "critical_factor")
    check_keys(data, names + AlertWebhook.KEYS, path)
    problems = [f"{path}.{k}: {v!r} must be a number >= 0, or null to switch this alert off"
                for k, v in data.items()
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0)]
    if problems:
        raise ConfigError(problems)
    return AlertThresholds(**data)


def build_engine(settings: LlmSettings, *, sinks=(), journal: bool = True, transport=None):
    """An Engine with every configured model, then every strategy, registered; answers journaled
    to diskcache first."""
    from .cache import ResultCache
    from .engine import Engine
    from .journal import DiskJournal, JournalError, MemoryBackend
    from .model import Model

    if journal:
        directory = settings.journal_path()
        try:
            backend = DiskJournal(directory)
        except Exception as exc:  # read-only, full, not a directory: say which setting to change
            raise JournalError(str(directory), exc, doing="open") from exc
    else:
        backend = MemoryBackend()
    ttl_s = settings.cache_ttl_days * 86400 if settings.cache_ttl_days else None
    engine = Engine(cache=ResultCache(backend, ttl_s=ttl_s), sinks=sinks)
    for name, config in settings.models.items():
        engine.register(Model(name, config, transport=transport))
    for name, strategy in settings.strategies.items():
        engine.register(StrategyModel(name, strategy, engine))
    return engine
