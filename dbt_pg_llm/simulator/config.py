"""The simulator's knobs (``python -m dbt_pg_llm.simulator --help`` lists them with their flags)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .faults import RATE_LIMIT_HEADER_MODES, check_faults

__all__ = ["SimulatorConfig"]


def _names(value, what: str) -> tuple[str, ...] | None:
    """"a,b" or ["a", "b"] -> ("a", "b"); None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(x).strip() for x in items if str(x).strip())
    if isinstance(value, str) and not names:
        raise ValueError(f"{what}: give at least one name, e.g. a,b")
    return names


@dataclass
class SimulatorConfig:
    """The simulator's knobs.

    ``models``: the model names served (None = accept every name); others get 404 model_not_found.
    ``reject_params``: request parameters answered with 400 naming them (a server without them).
    ``rate_limit_headers``: how 429s say when to come back: "retry-after" (Retry-After +
    retry-after-ms), "x-ratelimit" (OpenAI x-ratelimit-* / Anthropic anthropic-ratelimit-*; also on
    every answer while rpm/tpm is set) or "none".
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    per_token_ms: float = 0.0
    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    rate_window_s: float = 60.0  # rpm/tpm enforced per window of this length (1 = per-second slices)
    api_key: str | None = field(default=None, repr=False)
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
    # prompt caching (prompt_cache.py): None = the input price for reads, 1.25x it for writes (Anthropic)
    cost_per_1k_cached_input: float | None = None
    cost_per_1k_cache_write: float | None = None
    faults: dict[str, float] = field(default_factory=dict)
    seed: int | None = 0
    stall_s: float = 300.0
    models: tuple[str, ...] | None = None
    reject_params: tuple[str, ...] = ()
    rate_limit_headers: str = "retry-after"
    fault_retry_after_s: float = 1.0  # the wait a scripted/random `429` fault asks for
    batch_delay_s: float = 0.0  # batch APIs (batch_api.py): a batch ends this long after creation
    batch_error_rate: float = 0.0  # share of batch requests answered with an error
    batch_expire_rate: float = 0.0  # share of batch requests left unprocessed (expired) at the end
    batch_discount: float = 0.5  # batch price = list price x this
    # model -> share of its labels answers that are wrong (answers.mistaken_label): models of known error rates
    model_error_rates: dict[str, float] = field(default_factory=dict)

    def cost_of(self, ptoks: int, ctoks: int, cached: int = 0, cache_write: int = 0) -> float:
        """What the ledger bills for one answer: ``ptoks`` includes the cache reads and writes."""
        read_price = self.cost_per_1k_input if self.cost_per_1k_cached_input is None else self.cost_per_1k_cached_input
        write_price = 1.25 * self.cost_per_1k_input if self.cost_per_1k_cache_write is None \
            else self.cost_per_1k_cache_write
        return ((ptoks - cached - cache_write) / 1000 * self.cost_per_1k_input + cached / 1000 * read_price
                + cache_write / 1000 * write_price + ctoks / 1000 * self.cost_per_1k_output)

    def __post_init__(self):
        self.faults = check_faults(self.faults)
        if isinstance(self.rate_window_s, bool) or not isinstance(self.rate_window_s, (int, float)) \
                or self.rate_window_s <= 0:
            raise ValueError(f"rate_window_s: {self.rate_window_s!r} must be > 0 seconds (60 = per-minute buckets)")
        for name in ("batch_error_rate", "batch_expire_rate", "batch_discount"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)!r} must be between 0 and 1")
        self.models = _names(self.models, "models")
        for model, rate in self.model_error_rates.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"model_error_rates.{model}: {rate!r} must be a share between 0 and 1")
        self.reject_params = _names(self.reject_params, "reject_params") or ()
        if not isinstance(self.fault_retry_after_s, (int, float)) or self.fault_retry_after_s <= 0:
            raise ValueError(f"fault_retry_after_s: {self.fault_retry_after_s!r} must be a number of seconds > 0")
        if self.rate_limit_headers not in RATE_LIMIT_HEADER_MODES:
            raise ValueError(f"rate_limit_headers: {self.rate_limit_headers!r} is not one of "
                             f"{', '.join(RATE_LIMIT_HEADER_MODES)}")
