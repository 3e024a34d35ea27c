"""Packed prompts (BatchInput batch_size > 1) end to end: the engine packs, the simulator answers each
packed row as it would answer that row alone, so packing cuts requests and changes no value."""
from __future__ import annotations

import json
import math

import pytest

from dbt_pg_llm import BatchInput, Model, ModelInput, ResponseFormat
from dbt_pg_llm.models.batch import pack_prompt
from dbt_pg_llm.models.runtime import shared_loop
from dbt_pg_llm.simulator.answers import JSON_PHRASE, LABELS_PHRASE
from dbt_pg_llm.simulator.packing import answer, packed_inputs

LABELS = ["positive", "negative", "neutral"]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["product", "score"],
          "properties": {"product": {"type": "string"}, "score": {"type": "integer", "minimum": 1, "maximum": 5}}}
REVIEWS = ["love this kettle", "broke after a week, terrible", "it is a lamp", "great value, recommend",
           "arrived late", "superb sound", "refund please, useless"]
FORMATS = {
    "labels": (f"Classify the review.\n{LABELS_PHRASE}{' | '.join(LABELS)}", ResponseFormat.one_of(LABELS)),
    "json": (f"Extract.\n{JSON_PHRASE}{json.dumps(SCHEMA)}", ResponseFormat.json(SCHEMA)),
    "text": ("Summarize the review.", ResponseFormat.text()),
}


def batch_call(sim, batch: BatchInput, **config):
    model = Model("sim", {"api_url": sim.base_url, "model_version": "sim-1", "max_tokens": 64, "timeout_ms": 5000,
                          "retry": {"max_retries": 0}, **config})
    try:
        return model.batch_call(batch)
    finally:
        shared_loop().run(model.aclose())


@pytest.mark.parametrize("kind", sorted(FORMATS))
@pytest.mark.parametrize("batch_size", [3, 7])
def test_packed_batch_gives_single_call_values_in_fewer_requests(simulator, kind, batch_size):
    system, fmt = FORMATS[kind]
    inputs = [ModelInput(r, system_message=system, response_format=fmt) for r in REVIEWS]
    simulator.reset()
    single = batch_call(simulator, BatchInput(inputs))
    assert single.failed_count == 0 and simulator.stats()["requests"] == len(inputs)
    simulator.reset()
    packed = batch_call(simulator, BatchInput(inputs, batch_size=batch_size))
    assert packed.failed_count == 0
    assert [o.value for o in packed.outputs] == [o.value for o in single.outputs]
    assert simulator.stats()["requests"] == math.ceil(len(inputs) / batch_size)  # no row fell back
    assert packed.packed_requests == len(inputs) // batch_size


def test_packed_prompt_protocol_round_trip():
    system, fmt = FORMATS["json"]
    prompt = pack_prompt(REVIEWS[:3], fmt)
    assert packed_inputs(prompt) == REVIEWS[:3]
    mode, text = answer(system, prompt)
    assert mode == "packed"
    assert json.loads(text) == [json.loads(answer(system, r)[1]) for r in REVIEWS[:3]]
    # not a packed prompt, or a garbled one: answered as an ordinary prompt
    assert packed_inputs("Answer each of the 2 numbered inputs below independently.\n\n[1]") is None
    assert answer(system, "hello")[0] == "json"


@pytest.mark.parametrize("provider,method", [("openai", "json_schema"), ("anthropic", "tool")])
def test_labels_as_an_enum_schema_match_the_labels_prompt(simulator, provider, method):
    """A model reads the text whichever way the labels are asked for: an enum in a json_schema or a
    forced tool picks the same label as the plain prompt (so switching methods changes no label)."""
    system, fmt = FORMATS["labels"]
    inputs = [ModelInput(r, system_message=system, response_format=fmt) for r in REVIEWS]
    plain = batch_call(simulator, BatchInput(inputs))
    enum = batch_call(simulator, BatchInput(inputs), provider=provider, structured_output=method)
    assert enum.failed_count == 0
    assert [o.value for o in enum.outputs] == [o.value for o in plain.outputs]
    assert {"positive", "negative"} <= {o.value for o in plain.outputs}
