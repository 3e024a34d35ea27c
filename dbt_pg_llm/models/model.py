"""Model: one configured LLM endpoint, and what a single call does.

``acall`` = pool slot (concurrency, RPM/TPM) -> provider HTTP request -> answer validated against its
response format -> status, circuit breaker, metrics and one ModelLog per attempt; all under the
model's RetryPolicy (the only retry layer). It never raises ModelError: a failure is a ModelOutput
whose ``error_kind`` says why, so batch callers keep going row by row. Tokens paid for by failed
attempts are still counted in the output's cost: paid is paid.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import ConfigError, ErrorKind, ModelError
from .config import ModelConfig
from .keys import request_key
from .lease import admit_send
from .logs import LogDispatcher, ModelLog
from .metrics import ModelMetrics
from .model_io import ModelInput, ModelOutput, TokenUsage, confidence_from_logprobs
from .pool import RequestPool
from .pricing import cost_usd, prompt_cache_saving_usd
from .providers import ProviderResult, provider_for
from .spend import Reservation, SpendLimit, active_limit, estimate_cost, using_limit
from .status import CircuitBreaker, ModelStatus

if TYPE_CHECKING:
    import httpx

    from .batch import BatchInput, BatchOutput
    from .providers import RateLimitState

__all__ = ["Model", "ModelInput", "ModelOutput"]


class Model:
    def __init__(self, name: str, config: ModelConfig | dict, *, transport: "httpx.AsyncBaseTransport | None" = None,
                 breaker: CircuitBreaker | None = None, log: LogDispatcher | None = None,
                 metrics: ModelMetrics | None = None):
        if not name or not isinstance(name, str):
            raise ConfigError([f"model name: {name!r} must be a non-empty string"])
        self.name = name
        self._transport = transport
        self.log = log or LogDispatcher([])
        self.metrics = metrics or ModelMetrics()
        self.breaker = breaker or CircuitBreaker()
        self.status = ModelStatus(breaker=self.breaker)
        self._apply(ModelConfig.from_dict(config, f"models.{name}").validate(f"models.{name}"))

    def _apply(self, config: ModelConfig) -> None:
        self.config = config
        self.provider = provider_for(config, self.name, self._transport)
        self.pool = RequestPool(config.max_concurrency, rpm=config.rpm, tpm=config.tpm)
        self.provider.rate_observer = self._observe_rate_limits
        self.status.set_enabled(config.enabled)

    def _observe_rate_limits(self, state: "RateLimitState") -> None:
        """The provider's remaining-budget headers: slow the pool down before it answers 429."""
        self.pool.observe_budget(state.remaining_requests, self._holdable(state.exhausted_for_s))

    def _holdable(self, seconds: float | None) -> float | None:
        """A wait the pool may hold every request for: not one beyond retry.max_retry_after_s (a daily
        budget spent for hours): then each request fails at once as rate_limited instead."""
        return seconds if seconds is not None and seconds <= self.config.retry.max_retry_after_s else None

    # -- the attributes of the C struct, as read-only views of the config ---------------------
    version = property(lambda self: self.config.model_version)
    api_url = property(lambda self: self.config.base_url)
    api_key = property(lambda self: self.config.api_key)
    timeout_ms = property(lambda self: self.config.timeout_ms)
    max_tokens = property(lambda self: self.config.max_tokens)
    enabled = property(lambda self: self.config.enabled)

    def get_config(self) -> ModelConfig:
        return self.config

    def configure(self, **changes) -> "Model":
        """Change settings (validated first; an invalid change leaves the model as it was)."""
        merged = {**self.config.to_dict(include_secret=True), **changes}
        self._apply(ModelConfig.from_dict(merged, f"models.{self.name}").validate(f"models.{self.name}"))
        return self

    def validate(self) -> "Model":
        self.config.validate(f"models.{self.name}")
        return self

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, provider={self.config.provider!r}, version={self.version!r})"

    # -- calls -------------------------------------------------------------------------------
    def cost_of(self, tokens: TokenUsage | int, completion_tokens: int = 0) -> float:
        """The cost of ``tokens`` (prompt-cache reads and writes at their own prices, pricing.py);
        ``cost_of(prompt_tokens, completion_tokens)`` prices tokens that did not touch the cache."""
        if not isinstance(tokens, TokenUsage):
            tokens = TokenUsage(tokens, completion_tokens)
        return cost_usd(self.config, tokens)

    def key_of(self, inp: ModelInput) -> str:
        return request_key(self.config, inp)

    async def acall(self, inp: ModelInput, *, context: dict | None = None, input_hash: str | None = None,
                    operation: str = "call") -> ModelOutput:
        if not self.config.enabled:
            return self._finish_failure(ModelError(ErrorKind.API, f"model '{self.name}' is disabled (enabled: false)",
                                                   recoverable=False, model=self.name), 0.0, 0, TokenUsage(), 0.0)
        if not self.breaker.allow():
            return self._finish_failure(ModelError(ErrorKind.API, f"circuit open for model '{self.name}' after "
                                                   "repeated failures; it will be probed again later",
                                                   model=self.name), 0.0, 0, TokenUsage(), 0.0,
                                        count_in_breaker=False)
        if inp.temperature is None or inp.max_tokens is None:
            inp = inp.with_defaults(self.config.temperature, self.config.max_tokens)
        input_hash = input_hash or self.key_of(inp)
        # latency = the last attempt's request time: pool queueing and retry waits are not the model's
        paid = {"tokens": TokenUsage(), "cost": 0.0, "attempts": 0, "latency_ms": 0.0}
        estimate = len(inp.prompt) // 4 + len(inp.system_message or "") // 4 + (inp.max_tokens or 0)
        limit = active_limit()
        worst_case = estimate_cost(self.config, inp) if limit is not None else 0.0

        async def attempt() -> ModelOutput:
            async with self.pool.slot(estimate) as slot:
                # a claimed key's request goes out only while its claim is surely ours: checked when
                # the slot is given, so a request queued before a pause is checked after it (lease.py)
                await admit_send(self.name)
                # reserved inside the slot: a reservation is only ever held by a request about to be sent
                reservation = await self._reserve(limit, worst_case)
                paid["attempts"] += 1
                number = paid["attempts"]
                self.status.request_started()
                # on the call spool before it goes out: a process dying while waiting still counts it
                call_id = self.log.sending(model=self.name, operation=operation, input_hash=input_hash,
                                           attempt=number, context=dict(context or {})) if self.log.sinks else None
                t0 = time.perf_counter()
                result: ProviderResult | None = None
                try:
                    try:
                        result = await self.provider.complete(inp)
                    except BaseException as exc:
                        self._settle(reservation, None, exc)
                        raise
                    self._settle(reservation, result, None)
                    slot.settle(result.prompt_tokens + result.completion_tokens)
                    output = self._to_output(result, inp)
                except ModelError as error:
                    latency = paid["latency_ms"] = (time.perf_counter() - t0) * 1000
                    self.status.request_finished(latency, error)
                    if error.kind is ErrorKind.RATE_LIMITED:
                        self.pool.record_rate_limited(self._holdable(error.retry_after))
                    tokens, cost = self._charge(result, paid)
                    self._log(operation, input_hash, number, latency, tokens, cost, context, error=error,
                              call_id=call_id)
                    raise
            latency = paid["latency_ms"] = (time.perf_counter() - t0) * 1000
            self.status.request_finished(latency, None)
            self.pool.record_success()
            output.tokens, output.cost_usd = self._charge(result, paid)
            self._log(operation, input_hash, number, latency, output.tokens, output.cost_usd, context,
                      http_status=result.http_status, call_id=call_id)
            return output

        try:
            output, attempts = await self.config.retry.run(attempt)
        except ModelError as error:
            # a request the spend limit kept from being sent is not the model's failure
            sent = error.kind not in (ErrorKind.BUDGET, ErrorKind.CLAIM_LOST)
            return self._finish_failure(error, paid["latency_ms"], paid["attempts"], paid["tokens"], paid["cost"],
                                        count_in_breaker=sent, count_in_metrics=sent or paid["attempts"] > 0)
        self.breaker.record_success()
        output.attempts = attempts
        output.tokens, output.cost_usd = paid["tokens"], paid["cost"]  # all attempts' paid tokens
        output.latency_ms = paid["latency_ms"]
        self.metrics.record(output)
        return output

    async def _reserve(self, limit: SpendLimit | None, worst_case: float) -> Reservation | None:
        """Hold this attempt's worst-case cost in the active spend limit, or raise BUDGET (not sent)."""
        if limit is None:
            return None
        reservation = await limit.reserve(worst_case)
        if reservation is None:
            raise ModelError(ErrorKind.BUDGET, f"not sent: its worst-case cost ${worst_case:.6f} does not fit in the "
                             f"spend limit: ${limit.spent_usd:.6f} spent + ${limit.reserved_usd:.6f} reserved by "
                             f"requests in flight, cap ${limit.cap_usd:.6f}",
                             recoverable=False, model=self.name)
        return reservation

    def _settle(self, reservation: Reservation | None, result: ProviderResult | None,
                error: BaseException | None) -> None:
        """Settle an attempt's reservation: the real cost of an answer; nothing for an HTTP error
        status or a request that never left (no connection could be opened: ``ModelError.unsent``);
        the whole reservation when there is no readable answer (it may have been billed)."""
        if reservation is None:
            return
        if result is not None:
            reservation.settle(self.cost_of(result.tokens))
        elif isinstance(error, ModelError) and (error.unsent or (error.http_status or 0) >= 300):
            reservation.release()
        else:
            reservation.keep()

    def _charge(self, result: ProviderResult | None, paid: dict) -> tuple[TokenUsage, float]:
        """Add one answered attempt's tokens and cost to the call's total; return this attempt's."""
        if result is None:
            return TokenUsage(), 0.0
        tokens = result.tokens
        cost = self.cost_of(tokens)
        paid["tokens"] = paid["tokens"] + tokens
        paid["cost"] += cost
        return tokens, cost

    def _to_output(self, result: ProviderResult, inp: ModelInput) -> ModelOutput:
        if result.refusal:  # the provider's own words, kept for llm_errors; paid tokens are charged
            raise ModelError(ErrorKind.REFUSED, f"the model refused: {result.refusal[:500]}",
                             http_status=result.http_status, model=self.name)
        if result.finish_reason == "content_filter":
            raise ModelError(ErrorKind.INVALID_OUTPUT, "answer withheld by the provider's content filter",
                             http_status=result.http_status, model=self.name)
        truncated = result.finish_reason == "length"
        try:
            text, value = inp.response_format.validate(result.text)
        except ModelError as error:
            suffix = _truncated_hint(result, inp) if truncated else ""
            raise ModelError(error.kind, error.message + suffix, recoverable=error.recoverable,
                             http_status=result.http_status, model=self.name) from None
        if inp.response_format.type == "labels" and result.first_token_logprob is not None:
            confidence = confidence_from_logprobs([result.first_token_logprob])
        else:
            confidence = confidence_from_logprobs(result.token_logprobs)
        return ModelOutput(text=text, value=value, confidence=confidence, truncated=truncated, model=self.name)

    def output_of(self, result: ProviderResult, inp: ModelInput) -> ModelOutput:
        """Validate an answer obtained outside ``acall`` (a batch result line) against ``inp``'s
        response format; raises ModelError (e.g. INVALID_OUTPUT) as a call's answer would."""
        return self._to_output(result, inp)

    def _finish_failure(self, error: ModelError, latency_ms: float, attempts: int, tokens: TokenUsage, cost: float,
                        count_in_breaker: bool = True, count_in_metrics: bool = True) -> ModelOutput:
        if count_in_breaker:
            self.breaker.record_failure(error)
        output = ModelOutput.failure(error, model=self.name, latency_ms=latency_ms, attempts=attempts)
        output.tokens, output.cost_usd = tokens, cost
        if count_in_metrics:
            self.metrics.record(output)
        return output

    def _log(self, operation, input_hash, attempt, latency_ms, tokens: TokenUsage, cost, context, *,
             error: ModelError | None = None, http_status: int | None = None, call_id: str | None = None) -> None:
        if not self.log.sinks:
            return
        self.log.emit(ModelLog(
            timestamp=datetime.now(timezone.utc), model=self.name, operation=operation, input_hash=input_hash,
            attempt=attempt, prompt_tokens=tokens.prompt, completion_tokens=tokens.completion,
            cached_tokens=tokens.cached, cache_write_tokens=tokens.cache_write,
            prompt_cache_saved_usd=prompt_cache_saving_usd(self.config, tokens),
            latency_ms=latency_ms, cost_usd=cost, cached=False,
            error_kind=(error.kind.value if error else ErrorKind.NONE.value),
            error_message=(error.message if error else None),
            http_status=(error.http_status if error else http_status), context=dict(context or {}),
            call_id=call_id,
        ))

    def call(self, inp: ModelInput, **kwargs) -> ModelOutput:
        """Blocking call for code that is not async (runs on the shared engine loop). The HTTP session
        it opens is closed by ``close()`` / ``with Model(...) as model:``, else at interpreter exit."""
        from .runtime import close_at_exit, shared_loop

        close_at_exit(self)
        return shared_loop().run(self.acall(inp, **kwargs))

    async def abatch_call(self, batch: "BatchInput", *, context: dict | None = None,
                          spend_limit: SpendLimit | None = None) -> "BatchOutput":
        """``spend_limit``: each request of the batch (packed or single) reserves its worst case there."""
        from .batch import run_batch

        with using_limit(spend_limit):
            return await run_batch(self, batch, context=context)

    def batch_call(self, batch: "BatchInput", **kwargs) -> "BatchOutput":
        from .runtime import close_at_exit, shared_loop

        close_at_exit(self)
        return shared_loop().run(self.abatch_call(batch, **kwargs))

    async def aclose(self) -> None:
        await self.provider.aclose()

    def close(self) -> None:
        """Close the HTTP session the blocking calls opened (on the shared loop)."""
        from .runtime import shared_loop

        shared_loop().run(self.aclose(), timeout=10)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncated_hint(result: ProviderResult, inp: ModelInput) -> str:
    """What to raise when an answer was cut at max_tokens: with the numbers (issue 18: a label
    answer wrapped in a code fence by llama.cpp's server failed as "truncated" 100 times of 100)."""
    used = f" after {result.completion_tokens} output tokens" if result.completion_tokens else ""
    sent = f" (max_tokens {inp.max_tokens})" if inp.max_tokens else ""
    hint = (f" (answer truncated at max_tokens{sent}{used}: raise max_tokens, in the column "
            "(max_tokens=...) or the model's profile (max_tokens:)")
    if inp.response_format.type != "text":
        hint += ("; a server that wraps its JSON or label in extra text (a ```json code fence) needs room for "
                 "it, or structured_output: prompt")
    return hint + ")"
