"""BatchPolicy in the profile (key paths and fixes), the column mode, the batch clients' size limits."""
from __future__ import annotations

import pytest

from dbt_pg_llm import ConfigError, LlmSettings
from dbt_pg_llm.models.batch_api import client_for
from dbt_pg_llm.models.batch_policy import BatchPolicy
from dbt_pg_llm.models.config import ModelConfig
from dbt_pg_llm.pg.spec import ColumnSpec

BASE = {"api_url": "http://127.0.0.1:1/v1", "model_version": "m"}


def test_profile_batch_block_is_validated_with_key_paths_and_fixes():
    with pytest.raises(ConfigError) as err:
        LlmSettings.from_dict({"models": {"gpt": {**BASE, "batch": {"enabled": "yes", "min_keys": 0, "discount": 1.5,
                                                                    "max_wait_s": -1, "pol_s": 3}}}})
    text = str(err.value)
    assert "llm.models.gpt.batch.pol_s: unknown key; did you mean 'poll_s'?" in text
    with pytest.raises(ConfigError) as err:
        LlmSettings.from_dict({"models": {"gpt": {**BASE, "batch": {"enabled": "yes", "min_keys": 0, "discount": 1.5,
                                                                    "max_wait_s": -1}}}})
    text = str(err.value)
    for expected in ("llm.models.gpt.batch.enabled: 'yes' must be true or false",
                     "llm.models.gpt.batch.min_keys: 0 must be a whole number >= 1",
                     "llm.models.gpt.batch.discount: 1.5 must be a number in (0, 1]",
                     "llm.models.gpt.batch.max_wait_s: -1 must be a number of seconds >= 0"):
        assert expected in text
    with pytest.raises(ConfigError, match=r"llm.models.gpt.batch: expected a mapping"):
        LlmSettings.from_dict({"models": {"gpt": {**BASE, "batch": "on"}}})


def test_batch_policy_round_trips_and_column_mode_switches_it():
    config = ModelConfig.from_dict({**BASE, "batch": {"enabled": True, "min_keys": 10, "max_wait_s": 60}})
    assert ModelConfig.from_dict(config.to_dict(include_secret=True)).batch == config.batch
    assert config.batch.for_column(None) == config.batch and config.batch.for_column("normal") is None
    off = BatchPolicy()
    assert off.for_column(None) is None and off.for_column("batch").enabled and off.for_column("batch").min_keys == 1000
    spec = ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "mode": "batch"}, default_model="gpt")
    assert spec.mode == "batch" and spec.fingerprint(config) == ColumnSpec.from_dict(
        {"kind": "complete", "prompt_sql": "body"}, default_model="gpt").fingerprint(config)  # not in the key
    with pytest.raises(ConfigError, match=r"column.mode: 'later' is not a mode; use 'batch'"):
        ColumnSpec.from_dict({"kind": "complete", "prompt_sql": "body", "mode": "later"}, default_model="gpt")


@pytest.mark.parametrize("provider,max_requests", [("openai", 50_000), ("anthropic", 100_000)])
def test_batches_respect_the_provider_request_and_byte_limits(provider, max_requests, monkeypatch):
    client = client_for(ModelConfig.from_dict({**BASE, "provider": provider}), "m")
    try:
        assert client.max_requests == max_requests
        monkeypatch.setattr(client, "max_requests", 3)
        sizes = [len(c) for c in client.chunks((f"k{i}", {"x": i}) for i in range(7))]
        assert sizes == [3, 3, 1]
        monkeypatch.setattr(client, "max_requests", 100)
        one = len(client.encode("k0", {"x": 0}))
        monkeypatch.setattr(client, "max_bytes", one * 2)
        chunks = list(client.chunks((f"k{i}", {"x": i}) for i in range(5)))
        assert [len(c) for c in chunks] == [2, 2, 1]
        assert all(sum(len(e) for _, _, e in c) <= one * 2 for c in chunks)
    finally:
        client.close()


def test_batch_on_a_provider_without_a_batch_client_is_a_config_error():
    azure = {**BASE, "provider": "azure", "api_version": "2024-10-21", "batch": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"models.az.batch.enabled: provider 'azure' has no batch API support"):
        ModelConfig.from_dict(azure, "models.az")
