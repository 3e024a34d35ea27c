"""dbt-pg-llm engine: put LLM output into warehouse tables. Plain Python; never imports dbt.

The model layer: ModelConfig (validated settings), Model (one endpoint: call / batch_call),
ModelRegistry, ModelStatus + CircuitBreaker, RetryPolicy (tenacity, the only retry layer),
Failover, InferenceStrategy (cascade on confidence, vote + merge, route by task),
RequestPool (concurrency, RPM/TPM), SpendLimit (a hard cost cap, reserved before each request), ResultCache (memory or diskcache journal),
ModelMetrics / ModelLog / ModelAlert, and Engine, which ties them together for the dbt adapter.
Exceptions are documented in ``dbt_pg_llm.errors``; the cache key in ``dbt_pg_llm.keys``.
"""
from .alerts import AlertThresholds, ModelAlert, should_alert
from .batch import BatchInput, BatchOutput
from .cache import DiskJournal, MemoryBackend, ResultCache
from .config import ModelConfig
from .engine import Engine
from .errors import ConfigError, ErrorKind, ModelError, PgLlmError, RegistryError
from .failover import Failover
from .keys import cache_key, fingerprint
from .logs import BufferedSink, LoggingSink, MemorySink, ModelLog
from .metrics import MetricsRegistry, ModelMetrics
from .model import Model
from .model_io import ModelInput, ModelOutput, ResponseFormat, TokenUsage
from .pool import RequestPool
from .registry import ModelRegistry
from .retry import RetryPolicy
from .settings import LlmSettings, build_engine
from .spend import Reservation, SpendLimit, estimate_cost
from .status import CircuitBreaker, ModelStatus
from .strategy import InferenceStrategy
from .strategy_model import StrategyConfig, StrategyModel

__version__ = "0.1.0"

__all__ = [
    "AlertThresholds", "BatchInput", "BatchOutput", "BufferedSink", "CircuitBreaker", "ConfigError",
    "DiskJournal", "Engine", "ErrorKind", "Failover", "InferenceStrategy", "LlmSettings", "LoggingSink", "MemoryBackend",
    "MemorySink", "MetricsRegistry", "Model", "ModelAlert", "ModelConfig", "ModelError", "ModelInput",
    "ModelLog", "ModelMetrics", "ModelOutput", "ModelRegistry", "ModelStatus", "PgLlmError", "RegistryError",
    "RequestPool", "Reservation", "ResponseFormat", "ResultCache", "RetryPolicy", "SpendLimit", "StrategyConfig", "StrategyModel", "TokenUsage", "build_engine", "cache_key",
    "estimate_cost", "fingerprint", "should_alert",
]
