"""``batch_size`` (row packing) as a model setting and a column-spec argument: validated with the key
path and the fix, and never part of a row's cache key (packing is a transport detail)."""
from __future__ import annotations

import pytest

from dbt_pg_llm.models.config import ModelConfig
from dbt_pg_llm.errors import ConfigError
from dbt_pg_llm.models.keys import request_key
from dbt_pg_llm.pg.spec import ColumnSpec

BASE = {"provider": "openai", "api_url": "http://127.0.0.1:1/v1", "model_version": "sim-small"}


def test_model_batch_size_is_read_and_validated_with_key_path_and_fix():
    assert ModelConfig.from_dict(dict(BASE)).batch_size == 1
    assert ModelConfig.from_dict({**BASE, "batch_size": "16"}, "llm.models.sim").batch_size == 16
    for bad in (0, -3, 2.5, "many"):
        with pytest.raises(ConfigError) as exc:
            ModelConfig.from_dict({**BASE, "batch_size": bad}, "llm.models.sim")
        assert "llm.models.sim.batch_size" in str(exc.value)
    with pytest.raises(ConfigError, match=r"llm\.models\.sim\.batch_size: 0 must be a whole number >= 1, e\.g\. 16"):
        ModelConfig.from_dict({**BASE, "batch_size": 0}, "llm.models.sim")


def test_column_batch_size_is_validated_and_not_in_the_key():
    spec = {"kind": "classify", "prompt_sql": "body", "labels": ["a", "b"], "model": "sim"}
    packed = ColumnSpec.from_dict({**spec, "batch_size": 16})
    assert packed.batch_size == 16 and ColumnSpec.from_dict(spec).batch_size is None
    for bad in (0, True, 1.5, "16"):
        with pytest.raises(ConfigError, match=r"column\.batch_size: .* must be a whole number >= 1"):
            ColumnSpec.from_dict({**spec, "batch_size": bad})
    config = ModelConfig.from_dict(dict(BASE))
    assert packed.fingerprint(config) == ColumnSpec.from_dict(spec).fingerprint(config)
    assert request_key(config.replace(batch_size=16), packed.model_input("x")) == \
        request_key(config, ColumnSpec.from_dict(spec).model_input("x"))


def test_profile_batch_size_problem_names_the_llm_key_path():
    from dbt_pg_llm.models.settings import LlmSettings

    with pytest.raises(ConfigError, match=r"llm\.models\.m\.batch_size: 0 must be a whole number >= 1"):
        LlmSettings.from_dict({"default_model": "m", "models": {"m": {**BASE, "batch_size": 0}}})
    assert LlmSettings.from_dict({"default_model": "m", "models": {"m": {**BASE, "batch_size": 16}}}) \
        .models["m"].batch_size == 16
