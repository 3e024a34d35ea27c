"""dbt-pg-llm engine: put LLM output into warehouse tables. Plain Python; never imports dbt.

The model layer: ModelConfig (validated settings), Model (one endpoint: call / batch_call),
ModelRegistry, ModelStatus + CircuitBreaker, RetryPolicy (tenacity, the only retry layer),
Failover, InferenceStrategy (cascade on confidence, vote + merge, route by task),
RequestPool (concurrency, RPM/TPM), SpendLimit (a hard cost cap, reserved before each request), ResultCache (memory or diskcache journal),
ModelMetrics / ModelLog / ModelAlert, and Engine, which ties them together for the dbt adapter.
Exceptions are documented in ``dbt_pg_llm.errors``; the cache key in ``dbt_pg_llm.models.keys``.
"""
from .errors import ConfigError, ErrorKind, ModelError, PgLlmError, RegistryError
from .models.alerts import AlertThresholds, ModelAlert, should_alert
from .models.batch import BatchInput, BatchOutput
from .models.cache import ResultCache
from .models.config import ModelConfig
from .models.engine import Engine
from .models.failover import Failover
from .models.journal import DiskJournal, MemoryBackend
from .models.keys import cache_key, fingerprint
from .models.logs import BufferedSink, LoggingSink, MemorySink, ModelLog
from .models.metrics import MetricsRegistry, ModelMetrics
from .models.model import Model
from .models.model_io import ModelInput, ModelOutput, ResponseFormat, TokenUsage
from .models.pool import RequestPool
from .models.registry import ModelRegistry
from .models.retry import RetryPolicy
from .models.settings import LlmSettings, build_engine
from .models.spend import Reservation, SpendLimit, estimate_cost
from .models.status import CircuitBreaker, ModelStatus
from .models.strategy import InferenceStrategy
from .models.strategy_model import StrategyConfig, StrategyModel

__version__ = "0.1.0"

__all__ = [
    "AlertThresholds", "BatchInput", "BatchOutput", "BufferedSink", "CircuitBreaker", "ConfigError",
    "DiskJournal", "Engine", "ErrorKind", "Failover", "InferenceStrategy", "LlmSettings", "LoggingSink", "MemoryBackend",
    "MemorySink", "MetricsRegistry", "Model", "ModelAlert", "ModelConfig", "ModelError", "ModelInput",
    "ModelLog", "ModelMetrics", "ModelOutput", "ModelRegistry", "ModelStatus", "PgLlmError", "RegistryError",
    "RequestPool", "Reservation", "ResponseFormat", "ResultCache", "RetryPolicy", "SpendLimit", "StrategyConfig", "StrategyModel", "TokenUsage", "build_engine", "cache_key",
    "estimate_cost", "fingerprint", "should_alert",
]
