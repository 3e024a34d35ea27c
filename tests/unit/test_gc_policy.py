"""Fewer GC passes while the engine streams calls (gc_policy.py): raised during a map, restored after."""
import gc

import httpx

from dbt_pg_llm import Engine, Model, ModelInput
from dbt_pg_llm.models.gc_policy import BULK_GEN0, bulk_gc


def test_thresholds_are_raised_while_any_bulk_stream_runs_and_restored_after_the_last():
    before = gc.get_threshold()
    with bulk_gc():
        assert gc.get_threshold()[0] == BULK_GEN0 and gc.get_threshold()[1:] == before[1:]
        with bulk_gc():  # a second dbt thread's fill
            assert gc.get_threshold()[0] == BULK_GEN0
        assert gc.get_threshold()[0] == BULK_GEN0  # the first one still runs
    assert gc.get_threshold() == before


def test_a_map_runs_under_the_bulk_threshold_and_an_opt_out_leaves_it_alone(monkeypatch):
    seen = []

    def handler(request):
        seen.append(gc.get_threshold()[0])
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    engine = Engine()
    engine.register(Model("m", {"api_url": "http://x/v1", "model_version": "v"},
                          transport=httpx.MockTransport(handler)))
    before = gc.get_threshold()
    assert all(out.ok for _, out in engine.map_unordered("m", ((i, ModelInput(f"p{i}")) for i in range(5))))
    assert seen == [BULK_GEN0] * 5 and gc.get_threshold() == before
    monkeypatch.setenv("DBT_PG_LLM_BULK_GC", "0")
    seen.clear()
    assert all(out.ok for _, out in engine.map_unordered("m", ((i, ModelInput(f"q{i}")) for i in range(3))))
    assert seen == [before[0]] * 3
    engine.close()
