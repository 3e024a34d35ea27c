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
    api_key: str | None = field(default=None, repr=False)
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
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

    def __post_init__(self):
        self.faults = check_faults(self.faults)
        for name in ("batch_error_rate", "batch_expire_rate", "batch_discount"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)!r} must be between 0 and 1")
        self.models = _names(self.models, "models")
        self.reject_params = _names(self.reject_params, "reject_params") or ()
        if not isinstance(self.fault_retry_after_s, (int, float)) or self.fault_retry_after_s <= 0:
            raise ValueError(f"fault_retry_after_s: {self.fault_retry_after_s!r} must be a number of seconds > 0")
        if self.rate_limit_headers not in RATE_LIMIT_HEADER_MODES:
            raise ValueError(f"rate_limit_headers: {self.rate_limit_headers!r} is not one of "
                             f"{', '.join(RATE_LIMIT_HEADER_MODES)}")
