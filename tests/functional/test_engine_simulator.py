"""The engine against the simulator over loopback: real HTTP, real faults, the simulator's ledger."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import pytest

from dbt_pg_llm import (BatchInput, DiskJournal, Engine, ErrorKind, MemoryBackend, MemorySink, Model,
                        ModelInput, ResponseFormat, ResultCache)
from dbt_pg_llm.simulator import SimulatorConfig

KEY = "sk-sim-functional-SECRET-42"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_for(sim, name="sim", **extra) -> Model:
    config = {"api_url": sim.base_url, "model_version": "sim-1", "api_key": KEY, "max_tokens": 64,
              "timeout_ms": 5000, "retry": {"max_retries": 3, "base_delay_ms": 10, "max_delay_ms": 3000}}
    config.update(extra)
    return Model(name, config)


@pytest.fixture
def keyed_sim(simulator_factory):
    return simulator_factory(SimulatorConfig(api_key=KEY, cost_per_1k_input=0.5, cost_per_1k_output=1.5))


def test_labels_json_and_text_round_trip(keyed_sim):
    engine = Engine()
    engine.register(model_for(keyed_sim))
    label = engine.call("sim", ModelInput("I love it, positive!", system_message=(
        "Answer with exactly one of these labels and nothing else: positive | negative | neutral"),
        response_format=ResponseFormat.one_of(["positive", "negative", "neutral"])))
    assert label.ok and label.value == "positive" and 0 < label.confidence <= 1
    schema = {"type": "object", "properties": {"product": {"type": "string"}, "ok": {"type": "boolean"}},
              "required": ["product", "ok"]}
    extracted = engine.call("sim", ModelInput("The kettle works", response_format=ResponseFormat.json(schema)))
    assert extracted.ok and set(extracted.value) == {"product", "ok"}
    text = engine.call("sim", ModelInput("Summarize: good value"))
    assert text.ok and text.text and text.tokens.completion > 0


def test_retry_honours_retry_after_from_the_server(keyed_sim):
    model = model_for(keyed_sim)
    t0 = time.perf_counter()
    out = model.call(ModelInput("please [[fault:429*1]] answer"))
    assert out.ok and out.attempts == 2
    assert time.perf_counter() - t0 >= 0.95  # the simulator sends Retry-After: 1 / retry-after-ms: 1000
    assert keyed_sim.stats()["by_prompt_sha256"][sha("please [[fault:429*1]] answer")] == 2


@pytest.mark.parametrize("prompt,kind", [("x [[fault:insufficient_quota]]", ErrorKind.QUOTA)])
def test_no_retry_on_insufficient_quota(keyed_sim, prompt, kind):
    out = model_for(keyed_sim).call(ModelInput(prompt))
    assert out.error_kind is kind and out.attempts == 1
    assert keyed_sim.stats()["by_prompt_sha256"][sha(prompt)] == 1


def test_no_retry_on_401_and_key_never_leaks(keyed_sim, caplog):
    bad = Model("bad", {"api_url": keyed_sim.base_url, "model_version": "sim-1", "api_key": "sk-wrong-key-123456"})
    sink = MemorySink()
    bad.log.add(sink)
    with caplog.at_level(logging.DEBUG):
        out = bad.call(ModelInput("hello there"))
    assert out.error_kind is ErrorKind.API and out.attempts == 1 and "authentication" in out.error_message
    assert keyed_sim.stats()["requests"] == 1
    for text in [out.error_message, caplog.text, repr(bad), repr(bad.config)] + [repr(log) for log in sink.logs]:
        assert "sk-wrong-key-123456" not in text and KEY not in text


def test_recoverable_faults_are_retried_to_success(keyed_sim):
    model = model_for(keyed_sim)
    for kind in ("500", "503", "529", "reset", "malformed", "truncated", "error_body"):
        prompt = f"row [[fault:{kind}*2]]"
        out = model.call(ModelInput(prompt))
        assert out.ok and out.attempts == 3, (kind, out.error_kind, out.error_message)


def test_stall_times_out(simulator_factory):
    sim = simulator_factory(SimulatorConfig(stall_s=5))
    out = model_for(sim, timeout_ms=300, retry={"max_retries": 0}).call(ModelInput("x [[fault:stall]]"))
    assert out.error_kind is ErrorKind.TIMEOUT and "timeout_ms=300" in out.error_message


def test_errors_never_cached_and_one_request_per_distinct_key(keyed_sim, tmp_path):
    engine = Engine(cache=ResultCache(DiskJournal(tmp_path / "journal")))
    engine.register(model_for(keyed_sim, retry={"max_retries": 0}))
    prompts = [f"review {i % 40}" for i in range(400)] + ["broken [[fault:500]]"] * 20

    async def run_all():
        return await asyncio.gather(*(engine.acall("sim", ModelInput(p)) for p in prompts))

    outs = engine.loop.run(run_all())
    stats = keyed_sim.stats()
    assert all(stats["by_prompt_sha256"][sha(f"review {i}")] == 1 for i in range(40))
    assert sum(o.ok for o in outs) == 400
    # 20 concurrent callers of the failing key shared one request, and the failure was not cached:
    assert stats["by_prompt_sha256"][sha("broken [[fault:500]]")] == 1
    assert not engine.call("sim", ModelInput("broken [[fault:500]]")).ok
    assert keyed_sim.stats()["by_prompt_sha256"][sha("broken [[fault:500]]")] == 2
    # the journal kept every paid answer: a new engine on the same directory makes no request
    engine2 = Engine(cache=ResultCache(DiskJournal(tmp_path / "journal")))
    engine2.register(model_for(keyed_sim))
    before = keyed_sim.stats()["requests"]
    assert engine2.call("sim", ModelInput("review 7")).cached
    assert keyed_sim.stats()["requests"] == before


def test_costs_equal_the_ledger(keyed_sim):
    engine = Engine(cache=ResultCache(MemoryBackend()))
    engine.register(model_for(keyed_sim, cost_per_1k_input_tokens=0.5, cost_per_1k_output_tokens=1.5))
    outs = list(engine.map_unordered("sim", ((i, ModelInput(f"text number {i}")) for i in range(100))))
    stats = keyed_sim.stats()
    assert sum(o.tokens.prompt for _, o in outs) == stats["prompt_tokens"]
    assert sum(o.tokens.completion for _, o in outs) == stats["completion_tokens"]
    assert sum(o.cost_usd for _, o in outs) == pytest.approx(stats["cost_usd"], abs=1e-9)


def test_failover_and_circuit_breaker(keyed_sim, simulator_factory):
    down = simulator_factory(SimulatorConfig(faults={"500": 1.0}))
    engine = Engine()
    engine.register(model_for(down, name="primary", retry={"max_retries": 0}, fallbacks=["backup"]))
    engine.register(model_for(keyed_sim, name="backup"))
    outs = [engine.call("primary", ModelInput(f"q{i}")) for i in range(8)]
    assert all(o.ok and o.model == "backup" for o in outs)
    # after 5 consecutive failures the primary's circuit opened: later calls did not reach it
    assert down.stats()["requests"] == 5
    assert engine.model("primary").status.refresh().circuit_state == "open"


def test_batch_order_failed_count_and_packing_fallback(keyed_sim):
    model = model_for(keyed_sim, retry={"max_retries": 0})
    prompts = ["alpha", "beta [[fault:insufficient_quota]]", "gamma", "delta"]
    out = model.batch_call(BatchInput([ModelInput(p) for p in prompts]))
    assert [o.ok for o in out.outputs] == [True, False, True, True]
    assert out.failed_count == 1 and out.error.startswith("quota")
    # packed prompts: the simulator answers each packed row as it would answer it alone
    fmt = ResponseFormat.one_of(["positive", "negative"])
    system = "Answer with exactly one of these labels and nothing else: positive | negative"
    packed = model.batch_call(BatchInput([ModelInput(f"review {i} positive", system_message=system,
                                                     response_format=fmt) for i in range(6)], batch_size=3))
    assert packed.failed_count == 0 and [o.value for o in packed.outputs] == ["positive"] * 6
    assert packed.packed_requests == 2


def test_anthropic_provider_and_streaming(keyed_sim):
    claude = Model("claude", {"provider": "anthropic", "api_url": keyed_sim.base_url, "model_version": "sim-claude",
                              "api_key": KEY, "max_tokens": 64, "retry": {"max_retries": 2, "base_delay_ms": 10}})
    out = claude.call(ModelInput("Great blender, positive overall", system_message=(
        "Answer with exactly one of these labels and nothing else: positive | negative"),
        response_format=ResponseFormat.one_of(["positive", "negative"])))
    assert out.ok and out.value == "positive" and out.tokens.prompt > 0 and out.confidence is None
    assert claude.call(ModelInput("x [[fault:529*1]]")).attempts == 2  # overloaded is retried
    quota = claude.call(ModelInput("x [[fault:insufficient_quota]]"))
    assert quota.error_kind is ErrorKind.QUOTA and quota.attempts == 1

    streaming = model_for(keyed_sim, name="streamer", stream=True)
    plain = model_for(keyed_sim, name="plain")
    a, b = streaming.call(ModelInput("Summarize: sturdy and quiet")), plain.call(ModelInput("Summarize: sturdy and quiet"))
    assert a.ok and a.text == b.text and a.tokens == b.tokens


def test_anthropic_stream_against_the_simulator(keyed_sim):
    config = {"provider": "anthropic", "api_url": keyed_sim.base_url, "model_version": "sim-claude", "api_key": KEY,
              "max_tokens": 64}
    streaming, plain = Model("claude-stream", {**config, "stream": True}), Model("claude-plain", config)
    a, b = streaming.call(ModelInput("Summarize: sturdy and quiet")), plain.call(ModelInput("Summarize: sturdy and quiet"))
    assert a.ok and a.text == b.text and a.tokens == b.tokens and a.tokens.completion > 0


def test_simulated_sentiment_follows_obvious_words(simulator):
    engine = Engine()
    engine.register(Model("s", {"api_url": simulator.base_url, "model_version": "sim-1"}))
    fmt = ResponseFormat.one_of(["positive", "negative", "neutral"])
    system = "Answer with exactly one of these labels and nothing else: positive | negative | neutral"
    label = lambda text: engine.call("s", ModelInput(text, system_message=system, response_format=fmt)).value
    assert label("Regret buying this. It broke after two days.") == "negative"
    assert label("Exceeded my expectations, I love it.") == "positive"


def test_requests_go_through_the_proxy_the_environment_names_unless_no_proxy_exempts_the_host(keyed_sim, monkeypatch):
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY are honoured as httpx honours them (looked up once per URL):
    the simulator stands in for the proxy of a host that does not exist."""
    monkeypatch.setenv("HTTP_PROXY", keyed_sim.base_url.rsplit("/v1", 1)[0])
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = model_for(keyed_sim, api_url="http://llm.invalid/v1", retry={"max_retries": 0})
    out = proxied.call(ModelInput("Summarize: through the proxy"))
    assert out.ok, out.error_message
    assert keyed_sim.stats()["by_prompt_sha256"][sha("Summarize: through the proxy")] == 1
    monkeypatch.setenv("NO_PROXY", "llm.invalid")
    direct = model_for(keyed_sim, api_url="http://llm.invalid/v1", retry={"max_retries": 0})
    out = direct.call(ModelInput("Summarize: not through the proxy"))
    assert not out.ok and "could not connect" in out.error_message
