"""pg_llm.filter and multi-label classify (issue 20.1): spec checks, keys, the join's types, the simulator's rules."""
from __future__ import annotations

import pytest

from dbt_pg_llm.models.config import ModelConfig
from dbt_pg_llm.errors import ConfigError, ModelError
from dbt_pg_llm.pg.join import join_sql
from dbt_pg_llm.pg.spec import FILTER_PHRASE, MULTI_LABEL_PHRASE, ColumnSpec
from dbt_pg_llm.simulator.answers import compute_answer
from dbt_pg_llm.simulator.filter_answers import content_words
from dbt_pg_llm.models.tokens import output_tokens_bound

CONFIG = ModelConfig.from_dict({"provider": "openai", "api_url": "http://127.0.0.1:1/v1", "model_version": "sim-small"})
FILTER = {"kind": "filter", "prompt_sql": "body", "question": "Does the review mention shipping?", "model": "sim"}
MULTI = {"kind": "classify", "prompt_sql": "body", "labels": ["battery", "screen", "price"], "multi_label": True,
         "model": "sim"}


def test_filter_spec_is_two_labels_with_the_question_in_the_key():
    spec = ColumnSpec.from_dict(FILTER)
    assert spec.system_message.endswith(FILTER_PHRASE + FILTER["question"])
    assert spec.response_format.type == "labels" and spec.response_format.labels == ("true", "false")
    other = ColumnSpec.from_dict({**FILTER, "question": "Does the review mention price?"})
    assert spec.fingerprint(CONFIG) != other.fingerprint(CONFIG)
    assert spec.fingerprint(CONFIG) == ColumnSpec.from_dict(dict(FILTER)).fingerprint(CONFIG)  # stable
    assert not spec.is_json and spec.output_column == "output_text"


def test_multi_label_spec_is_a_label_set_schema_in_the_key():
    spec = ColumnSpec.from_dict(MULTI)
    single = ColumnSpec.from_dict({**MULTI, "multi_label": False})
    assert spec.fingerprint(CONFIG) != single.fingerprint(CONFIG)
    assert spec.is_json and spec.output_column == "output_json" and not single.is_json
    assert MULTI_LABEL_PHRASE in spec.system_message
    fmt = spec.response_format
    assert fmt.validate('{"labels": ["price", "battery"]}')[1] == {"labels": ["price", "battery"]}
    assert fmt.validate('{"labels": []}')[1] == {"labels": []}
    for bad in ('{"labels": ["price", "price"]}', '{"labels": ["cost"]}', '["price"]', '{"labels": "price"}'):
        with pytest.raises(ModelError):  # outside the labels: an error, never a value
            fmt.validate(bad)
    # sized from the labels: every label once fits, far below a default of hundreds of tokens
    full = '{"labels": ["battery", "screen", "price"]}'
    assert len(full.encode()) <= spec.effective_max_tokens <= 80
    assert output_tokens_bound(CONFIG, spec.model_input("x")) == spec.effective_max_tokens
    assert ColumnSpec.from_dict({**MULTI, "max_tokens": 500}).effective_max_tokens == 500


@pytest.mark.parametrize("change, needle", [
    ({"question": ""}, "question"), ({"question": None}, "question"), ({"question": 3}, "question"),
    ({"multi_label": True}, "multi_label"), ({"labels": ["a"]}, "labels"),
])
def test_filter_bad_input_names_the_argument(change, needle):
    with pytest.raises(ConfigError) as err:
        ColumnSpec.from_dict({**FILTER, **change})
    assert f"column.{needle}" in str(err.value)


@pytest.mark.parametrize("change, needle", [
    ({"multi_label": "yes"}, "multi_label"), ({"multi_label": 1}, "multi_label"), ({"labels": "a, b"}, "labels"),
    ({"question": "why?"}, "question"),
])
def test_multi_label_bad_input_names_the_argument(change, needle):
    with pytest.raises(ConfigError) as err:
        ColumnSpec.from_dict({**MULTI, **change})
    assert f"column.{needle}" in str(err.value)


def test_join_types_the_columns():
    f, m = ColumnSpec.from_dict(FILTER), ColumnSpec.from_dict(MULTI)
    sql = join_sql("src", [("ships", f, "a" * 64), ("topics", m, "b" * 64)])
    assert "(__llm_r0.output_text)::boolean as \"ships\"" in sql
    assert "__llm_r0.confidence as \"ships__confidence\"" in sql
    assert "__llm_r1.output_json" in sql and "with ordinality" in sql and " as \"topics\"" in sql


def test_simulator_rules():
    f, m = ColumnSpec.from_dict(FILTER), ColumnSpec.from_dict(MULTI)
    assert content_words(FILTER["question"]) == ["shipping"]
    assert compute_answer(f.system_message, "Fast SHIPPING, thanks") == ("labels", "true")
    assert compute_answer(f.system_message, "It ships fast") == ("labels", "false")  # whole words only
    enum = '{"type":"json_schema","json_schema":{"schema":{"type":"object","properties":{"label":{"enum":["true","false"]}}}}}'
    assert compute_answer(f.system_message, "shipping", enum) == ("json", '{"label":"true"}')
    assert compute_answer(m.system_message, "The price is fine, the Battery not") == \
        ("json", '{"labels":["battery","price"]}')  # label order, not text order
    assert compute_answer(m.system_message, "nothing relevant") == ("json", '{"labels":[]}')
