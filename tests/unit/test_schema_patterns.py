"""Issue 16 §4: one answer row must not freeze a run (ReDoS). JSON-schema patterns are matched by RE2
in linear time; patterns RE2 cannot match are refused when the schema is parsed, naming the key path."""
from __future__ import annotations

import time

import pytest

from dbt_pg_llm import ConfigError, ErrorKind, ResponseFormat
from dbt_pg_llm.errors import ModelError
from dbt_pg_llm.models.json_schema import schema_problems
from dbt_pg_llm.pg import ColumnSpec

REDOS = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}, "required": ["s"]}


def outcome(fmt: ResponseFormat, answer: str) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        fmt.validate(answer)
        result = "valid"
    except ModelError as exc:
        result = exc.kind.value
    return result, time.perf_counter() - started


def test_a_catastrophic_pattern_against_a_hostile_answer_is_decided_at_once():
    fmt = ResponseFormat.json(REDOS)
    # Python's re: seconds here (43 s at 30 'a', doubling per character); RE2 is linear in the answer
    assert outcome(fmt, '{"s": "%s"}' % ("a" * 27 + "b")) == (ErrorKind.INVALID_OUTPUT.value, pytest.approx(0, abs=0.5))
    result, took = outcome(fmt, '{"s": "%s"}' % ("a" * 200_000 + "b"))
    assert result == ErrorKind.INVALID_OUTPUT.value and took < 0.5
    assert outcome(fmt, '{"s": "%s"}' % ("a" * 30))[0] == "valid"


def test_pattern_properties_and_additional_properties_match_names_in_linear_time():
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False}
    fmt = ResponseFormat.json(schema)
    hostile = "a" * 25 + "b"  # matched twice (patternProperties, additionalProperties): ~2 s with Python's re
    result, took = outcome(fmt, '{"%s": 1}' % hostile)
    assert result == ErrorKind.INVALID_OUTPUT.value and took < 0.5
    with pytest.raises(ModelError, match="does not match any of the regexes"):
        fmt.validate('{"%s": 1}' % hostile)
    assert outcome(fmt, '{"aaa": 1}')[0] == "valid"
    with pytest.raises(ModelError, match="aaa"):  # the pattern's subschema still applies
        fmt.validate('{"aaa": "one"}')
    extra = ResponseFormat.json({"type": "object", "properties": {"x": {}}, "patternProperties": {"^y": {}},
                                 "additionalProperties": {"type": "string"}})
    assert outcome(extra, '{"x": 1, "y1": 2, "z": "s"}')[0] == "valid"
    assert outcome(extra, '{"z": 3}')[0] == ErrorKind.INVALID_OUTPUT.value


def test_patterns_keep_json_schema_meaning():
    """ECMA-262, as JSON Schema says: search (not a full match), '$' the end of the text, ASCII \\d."""
    assert outcome(ResponseFormat.json({"type": "string", "pattern": "b"}), '"abc"')[0] == "valid"
    assert outcome(ResponseFormat.json({"type": "string", "pattern": "^a$"}), '"a\\n"')[0] == "invalid_output"
    assert outcome(ResponseFormat.json({"type": "string", "pattern": "^\\d+$"}), '"12"')[0] == "valid"
    assert outcome(ResponseFormat.json({"type": "string", "pattern": "^\\d+$"}), '"\u0663"')[0] == "invalid_output"
    assert outcome(ResponseFormat.json({"type": "string", "pattern": "^.$"}), '"\\ud800"')[0] == "valid"
    assert outcome(ResponseFormat.json({"type": "integer", "pattern": "^x"}), "3")[0] == "valid"  # strings only


@pytest.mark.parametrize("pattern, why", [(r"^(a)\1$", "invalid escape sequence"),
                                          (r"^(?!x)", "invalid perl operator"),
                                          (r"(?<=a)b", "invalid perl operator"),
                                          (r"a{1001}", "invalid repetition size")])
def test_a_pattern_re2_cannot_match_is_refused_at_parse_time_naming_its_key(pattern, why):
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}
    problems = schema_problems(schema, "models.m.columns.c.schema")
    assert len(problems) == 1
    assert problems[0].startswith("models.m.columns.c.schema/properties/code/pattern: ")
    assert why in problems[0] and "rewrite the pattern" in problems[0]
    with pytest.raises(ConfigError, match="properties/code/pattern"):
        ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "body", "schema": schema}, default_model="m")
    names = {"type": "object", "patternProperties": {pattern: {}}}
    assert schema_problems(names, "s")[0].startswith(f"s/patternProperties/{pattern}: ")


def test_names_and_data_are_not_taken_for_patterns():
    schema = {"type": "object", "properties": {"pattern": {"type": "string"}, "(": {"type": "string"}},
              "examples": [{"pattern": "(a)\\1"}], "$defs": {"patternProperties": {"type": "object"}}}
    assert schema_problems(schema) == []


def test_unevaluated_properties_beside_pattern_properties_is_refused():
    schema = {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    problems = schema_problems(schema, "c.schema")
    assert problems == [problems[0]] and problems[0].startswith("c.schema/unevaluatedProperties: ")
    assert "additionalProperties" in problems[0]
    assert schema_problems({"type": "object", "properties": {"x": {}}, "unevaluatedProperties": False}) == []
