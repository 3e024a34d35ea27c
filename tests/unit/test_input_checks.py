"""Bad input is refused before any request: extract schemas, their $ref, classify labels (no Postgres)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from dbt_pg_llm import ConfigError, ModelError, ResponseFormat
from dbt_pg_llm.pg import ColumnSpec
from dbt_pg_llm.pg.spec import CLASSIFY_PHRASE


def extract(schema, path="columns.facts"):
    return ColumnSpec.from_dict({"kind": "extract", "prompt_sql": "body", "schema": schema}, "m", path=path)


def classify(labels, path="columns.mood"):
    return ColumnSpec.from_dict({"kind": "classify", "prompt_sql": "body", "labels": labels}, "m", path=path)


def problems_of(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return "\n".join(info.value.problems)


# -- JSON schemas -----------------------------------------------------------------------------------
def test_an_invalid_extract_schema_is_refused_naming_the_column_and_the_problem():
    text = problems_of(extract, {"type": "objekt"})
    assert "columns.facts.schema/type" in text and "'objekt'" in text and "object, string" in text
    text = problems_of(extract, {"type": "object", "properties": {"n": {"type": "integer", "minimum": "ten"}}})
    assert "columns.facts.schema/properties/n/minimum" in text and "'ten'" in text
    # the dialect named by $schema decides (draft-04's boolean exclusiveMaximum is invalid in 2020-12)
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "maximum": 3,
              "exclusiveMaximum": True}
    assert extract(draft4).schema == draft4
    text = problems_of(extract, {**draft4, "$schema": "https://json-schema.org/draft/2020-12/schema"})
    assert "exclusiveMaximum" in text and "draft/2020-12" in text
    text = problems_of(extract, {"$schema": "https://example.com/my-dialect", "type": "object"})
    assert "columns.facts.schema/$schema" in text and "drop $schema" in text
    assert "not JSON" in problems_of(extract, {"type": "object", "enum": [{1, 2}]})
    with pytest.raises(ConfigError, match="json_schema/type"):
        ResponseFormat.json({"type": "objekt"})


def test_local_refs_resolve_and_dangling_ones_are_refused():
    schema = {"type": "object", "$defs": {"city": {"type": "string"}},
              "properties": {"city": {"$ref": "#/$defs/city"}, "also": {"$ref": "#/properties/city"}}}
    fmt = extract(schema).response_format
    assert fmt.validate('{"city": "Paris"}')[1] == {"city": "Paris"}
    with pytest.raises(ModelError, match="city"):
        fmt.validate('{"city": 3}')
    embedded = {"$defs": {"a": {"$id": "urn:address", "type": "string"}}, "properties": {"x": {"$ref": "urn:address"}}}
    assert extract(embedded).response_format.validate('{"x": "here"}')[1] == {"x": "here"}
    text = problems_of(extract, {"properties": {"x": {"$ref": "#/$defs/missing"}}})
    assert "columns.facts.schema/properties/x/$ref" in text and "points to nothing" in text


class SilentServer:
    """A real TCP server on loopback that accepts connections and never answers; counts them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.held.append(conn)  # never read, never answered

    def close(self):
        self.stop.set()
        self.thread.join(2)
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_a_remote_ref_is_refused_at_once_and_never_fetched():
    server = SilentServer()
    url = f"http://127.0.0.1:{server.port}"
    schemas = [
        {"type": "object", "properties": {"city": {"$ref": f"{url}/city.json"}}},
        {"$id": f"{url}/root.json", "type": "object", "properties": {"city": {"$ref": "city.json"}}},
        {"$ref": "city.json"},
        {"$schema": f"{url}/meta.json", "type": "object"},
    ]
    outcome: dict = {}

    def check_all():  # in a thread: today's code would hang on the silent server
        outcome["texts"] = [problems_of(extract, schema) for schema in schemas]
        with pytest.raises(ConfigError):
            ResponseFormat.json(schemas[0])
        outcome["done"] = True

    try:
        started = time.monotonic()
        worker = threading.Thread(target=check_all, daemon=True)
        worker.start()
        worker.join(10)
        elapsed = time.monotonic() - started
        assert outcome.get("done"), f"not refused within 10 s: {outcome}"
        assert elapsed < 2.0
        print(f"\n{len(schemas)} remote references refused in {elapsed * 1000:.0f} ms, 0 connections")
        time.sleep(0.2)  # a connection attempt would have been accepted by now
        assert server.accepted == 0
    finally:
        server.close()
    first, relative, bare, meta = outcome["texts"]
    assert "columns.facts.schema/properties/city/$ref" in first and "refers outside this schema" in first
    assert "'#/$defs/<name>'" in first and "never fetches" in first
    assert "refers outside" in relative and "refers outside" in bare
    assert "columns.facts.schema/$schema" in meta


# -- labels -----------------------------------------------------------------------------------------
def test_labels_are_distinct_non_empty_text_without_nul():
    text = problems_of(classify, ["a", 3])
    assert "columns.mood.labels[1]: 3 is int, not text; quote it" in text
    assert "NUL" in problems_of(classify, ["a\x00b", "c"])
    assert "columns.mood.labels[2]: 'a' appears twice" in problems_of(classify, ["a", "b", "a"])
    assert "columns.mood.labels[0]: a label must be non-empty" in problems_of(classify, ["  ", "b"])
    assert "use 'a'" in problems_of(classify, [" a", "b"])
    assert "True is bool" in problems_of(classify, [True, False])  # YAML's `yes` / `no`
    for bad in ([], "positive", None):
        assert "non-empty list of labels" in problems_of(classify, bad)
    with pytest.raises(ConfigError, match=r"labels\[1\]"):
        ResponseFormat.one_of(["a", 3])
    with pytest.raises(ValueError):  # ConfigError is a ValueError, as one_of raised before
        ResponseFormat.one_of([])
    assert ResponseFormat.one_of(["x", "y"]).labels == ("x", "y")


def test_labels_reach_the_prompt_as_a_json_list_and_answers_match_one_label():
    labels = ["yes | no", "yes", "no", "a, b", "line\nbreak", 'say "hi"', "N/A."]
    spec = classify(labels)
    system = spec.model_input("p").system_message
    assert system.startswith(CLASSIFY_PHRASE)
    assert json.loads(system[len(CLASSIFY_PHRASE):]) == labels
    fmt = spec.response_format
    assert fmt.validate("yes | no") == ("yes | no", "yes | no")
    assert fmt.validate('"yes | no"')[1] == "yes | no"  # a model echoing the JSON form
    assert fmt.validate(" Yes ")[1] == "yes"
    assert fmt.validate('"line\\nbreak"')[1] == "line\nbreak"
    assert fmt.validate("N/A.")[1] == "N/A."
    assert fmt.validate("'no'.")[1] == "no"
    with pytest.raises(ModelError, match="not one of the labels"):
        fmt.validate("yes or no")
    cased = ResponseFormat.one_of(["Yes", "YES", "no"])
    assert cased.validate("YES")[1] == "YES"
    with pytest.raises(ModelError):  # 'yes' folds to two labels: ambiguous, never guessed
        cased.validate("yes")
