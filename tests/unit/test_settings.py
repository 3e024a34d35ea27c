"""The profile's llm: block: every problem reported at once with its key path and fix."""
import pytest

from dbt_pg_llm import ConfigError, LlmSettings
from dbt_pg_llm.models.alerts import AlertThresholds

GOOD = {"api_url": "http://localhost:11434/v1", "model_version": "llama3.2", "api_key": "sk-settings-secret-99"}


def test_valid_block_and_defaults():
    s = LlmSettings.from_dict({"models": {"local": GOOD}})
    assert s.audit_schema == "llm_audit" and s.model_for_default == "local" and s.on_error == "null"
    assert s.alerts == AlertThresholds()
    assert "sk-settings-secret-99" not in repr(s.redacted()) and "sk-settings-secret-99" not in repr(s)


def test_every_problem_named_with_its_key_path():
    with pytest.raises(ConfigError) as info:
        LlmSettings.from_dict({
            "default_model": "gpt",
            "audit_schema": "pg_llm",
            "cache_ttl_days": -1,
            "modles": {},
            "alerts": {"max_error_rate": -0.5, "max_latency": 3},
            "models": {"a": {**GOOD, "temperature": 9, "fallbacks": ["nope"]}, "b": {"provider": "azur"}},
        })
    problems = info.value.problems
    expected = ["llm.modles: unknown key; did you mean 'models'?", "llm.models.a.temperature:",
                "llm.models.b.provider:", "llm.models.b.api_url:", "llm.default_model:", "llm.audit_schema:",
                "llm.cache_ttl_days:", "llm.alerts.max_latency: unknown key"]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert "sk-settings-secret-99" not in str(info.value)


def test_alert_thresholds_and_fallback_checks():
    s = LlmSettings.from_dict({"default_model": "a", "alerts": {"max_error_rate": 0.5, "max_cost_usd": 10},
                               "models": {"a": {**GOOD, "fallbacks": ["b"]}, "b": GOOD}})
    assert s.alerts.max_error_rate == 0.5 and s.alerts.max_cost_usd == 10
    with pytest.raises(ConfigError, match=r"llm.models.a.fallbacks: 'c' is not a defined model"):
        LlmSettings.from_dict({"models": {"a": {**GOOD, "fallbacks": ["c"]}}})
    with pytest.raises(ConfigError, match=r"llm.alerts.min_requests: -1"):
        LlmSettings.from_dict({"models": {"a": GOOD}, "alerts": {"min_requests": -1}})


def test_identity_changes_with_keys_and_strategies_but_is_never_the_key():
    base = {"models": {"a": GOOD, "b": {**GOOD, "model_version": "big"}}, "default_model": "a"}
    smart = {"strategy": "cascade", "models": ["a", "b"], "min_confidence": 0.8}
    one = LlmSettings.from_dict({**base, "models": {**base["models"], "smart": smart}})
    same = LlmSettings.from_dict({**base, "models": {**base["models"], "smart": dict(smart)}})
    other = LlmSettings.from_dict({**base, "models": {**base["models"], "smart": {**smart, "min_confidence": 0.5}}})
    new_key = LlmSettings.from_dict({**base, "models": {"a": {**GOOD, "api_key": "sk-other-1234567"},
                                                        "b": base["models"]["b"], "smart": smart}})
    assert one.identity() == same.identity()
    assert len({one.identity(), other.identity(), new_key.identity()}) == 3
    assert "sk-settings-secret-99" not in one.identity()


def test_on_budget_defaults_to_warn_and_is_validated_with_key_path_and_fix():
    assert LlmSettings.from_dict({"models": {"a": GOOD}}).on_budget == "warn"
    assert LlmSettings.from_dict({"models": {"a": GOOD}, "on_budget": "fail", "max_cost_usd_per_run": 0.5}).on_budget == "fail"
    with pytest.raises(ConfigError) as info:
        LlmSettings.from_dict({"models": {"a": GOOD}, "on_budget": "stop"})
    assert any(p.startswith("llm.on_budget: 'stop' is not a mode; use 'warn'") and "'fail'" in p
               for p in info.value.problems), info.value.problems


def test_claim_timeout_defaults_to_120_s_and_is_checked():
    assert LlmSettings.from_dict({"models": {"local": GOOD}}).claim_timeout_s == 120
    assert LlmSettings.from_dict({"models": {"local": GOOD}, "claim_timeout_s": 5}).claim_timeout_s == 5
    for bad in (0, -3, "soon", True, 10 ** 6):
        with pytest.raises(ConfigError) as info:
            LlmSettings.from_dict({"models": {"local": GOOD}, "claim_timeout_s": bad})
        (problem,) = info.value.problems
        assert problem.startswith("llm.claim_timeout_s: ") and "from 1 to 86400 (default 120)" in problem


def test_a_waiting_progress_line_says_who_since_when_and_how_many():
    from dbt_pg_llm.pg.report import waiting_text

    assert waiting_text({"waiting_keys": 0}) is None
    assert waiting_text({"waiting_keys": 3}) == "3 key(s) claimed by other runs, waited for at the end"
    text = waiting_text({"waiting_keys": 12, "waiting_on": [
        {"run_id": "7f3a", "node_id": "model.p.x", "pid": 4242, "host": "etl-1", "application_name": "dbt-pg_llm",
         "since": "2026-11-28T20:31:02+00:00", "since_s": 35.2, "heartbeat_age_s": 1.6, "keys": 10}]})
    assert text == ("waiting for 12 key(s) claimed by another run: 10 by run 7f3a (node model.p.x, pid 4242 on "
                    "etl-1, dbt-pg_llm) since 2026-11-28T20:31:02+00:00 (35s ago), last heartbeat 2s ago; "
                    "2 more by others")


def test_max_error_rate_defaults_to_half_and_is_validated_with_its_key_path():
    assert LlmSettings.from_dict({"models": {"local": GOOD}}).max_error_rate == 0.5
    assert LlmSettings.from_dict({"models": {"local": GOOD}, "max_error_rate": 0}).max_error_rate == 0
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ConfigError) as info:
            LlmSettings.from_dict({"models": {"local": GOOD}, "max_error_rate": bad})
        assert any(p.startswith("llm.max_error_rate:") and "from 0 to 1" in p for p in info.value.problems)


def test_a_journal_dir_that_cannot_be_opened_names_llm_journal_dir(tmp_path):
    from dbt_pg_llm import PgLlmError
    from dbt_pg_llm.models.settings import build_engine

    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("in the way")  # a real OS error (ENOTDIR), also when running as root
    settings = LlmSettings.from_dict({"models": {"local": GOOD}, "journal_dir": str(not_a_dir / "journal")})
    with pytest.raises(PgLlmError) as info:
        build_engine(settings)
    text = str(info.value)
    assert "llm.journal_dir" in text and str(not_a_dir / "journal") in text and "writable directory" in text


def test_store_prompts_defaults_to_true_and_a_non_boolean_names_the_key_and_fix():
    assert LlmSettings.from_dict({"models": {"local": GOOD}}).store_prompts is True
    assert LlmSettings.from_dict({"models": {"local": GOOD}, "store_prompts": False}).store_prompts is False
    with pytest.raises(ConfigError) as info:
        LlmSettings.from_dict({"models": {"local": GOOD}, "store_prompts": "no"})
    assert any(p.startswith("llm.store_prompts: 'no' must be true") for p in info.value.problems)
