"""The demo checks that llm_runs, llm_calls and the simulator's ledger tell the same story."""
import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "integration_tests" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("pg_llm_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_disagreements_between_runs_calls_and_the_ledger_are_named():
    demo = _demo()
    # rows as RUNS_SQL / CALLS_SQL return them: a cold run (5316 paid) and a warm one (3596 hits)
    runs = {"cold": ("cold", "success", 5973, 5316, 5316, 0, 0, 462121, 0.0943, 0.0),
            "warm": ("warm", "success", 3973, 3596, 0, 3596, 0, 0, 0.0, 0.0711)}
    calls = [("cold", 5316, 0, 462121, 0.0943, 0.0), ("warm", 0, 3596, 0, 0.0, 0.0711)]
    assert demo.disagreements(runs, calls, 5316) == []
    # what the demo showed before: an in-process table with 0 cache hits next to llm_runs' 3596
    wrong = [("cold", 5316, 0, 462121, 0.0943, 0.0), ("warm", 0, 0, 0, 0.0, 0.0)]
    assert demo.disagreements(runs, wrong, 5316) == [
        "run warm: cache_hits is 3596 in llm_runs but 0 in llm_calls"]
    assert demo.disagreements(runs, calls, 5317) == [
        "llm_runs counts 5316 requests, the simulator's ledger 5317"]
