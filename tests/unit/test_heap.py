"""The adapter freezes dbt's long-lived heap once per process before the first fill (gc_policy.py)."""
import subprocess
import sys

SCRIPT = """
import gc, json
from dbt_pg_llm.models.gc_policy import freeze_long_lived_heap
keep = [[i] for i in range(50000)]  # long-lived objects, as dbt's parsed project is
before = gc.get_freeze_count()
first = freeze_long_lived_heap()
second = freeze_long_lived_heap()
print(json.dumps({"before": before, "first": first, "second": second, "after": gc.get_freeze_count()}))
"""


def run(env_value=None):
    import json
    import os

    env = dict(os.environ)
    env.pop("DBT_PG_LLM_FREEZE_HEAP", None)
    if env_value is not None:
        env["DBT_PG_LLM_FREEZE_HEAP"] = env_value
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_heap_alive_at_the_first_fill_is_frozen_once():
    result = run()
    assert result["before"] == 0
    assert result["first"] >= 50000 and result["after"] >= 50000  # (frozen objects freed since: fewer)
    assert result["second"] == 0  # once per process


def test_freezing_can_be_turned_off():
    assert run("0") == {"before": 0, "first": 0, "second": 0, "after": 0}


def test_freezing_does_not_scan_the_whole_heap():
    """A young collection before the freeze, not a full one (which scanned dbt's whole parsed
    project: 85 ms of every enriching dbt run)."""
    script = """
import gc, json
from dbt_pg_llm.models.gc_policy import freeze_long_lived_heap
keep = [[i] for i in range(50000)]
gc.collect()
generations = []
gc.callbacks.append(lambda phase, info: phase == "start" and generations.append(info["generation"]))
freeze_long_lived_heap()
print(json.dumps(generations))
"""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if k != "DBT_PG_LLM_FREEZE_HEAP"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    generations = json.loads(done.stdout.strip().splitlines()[-1])
    assert generations and max(generations) <= 1
