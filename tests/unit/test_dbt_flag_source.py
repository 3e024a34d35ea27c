"""The test suite's replacement of dbt_common's BehaviorFlagRendered._default_source (tests/conftest.py)
names the same module as dbt's own."""
from dbt_common import behavior_flags
from dbt_common.behavior_flags import Behavior


def _sources(flags):
    return {name: getattr(Behavior(flags, {}), name)._behavior_change_event.flag_source
            for name in (f["name"] for f in flags)}


def test_the_replacement_names_the_module_dbt_names():
    patched = behavior_flags.BehaviorFlagRendered._default_source
    original = patched.dbt_original  # the conftest kept dbt's own
    flags = [{"name": "pg_llm_probe", "default": False, "description": "a probe"}]
    ours = _sources(flags)
    try:
        behavior_flags.BehaviorFlagRendered._default_source = staticmethod(original)
        theirs = _sources(flags)
    finally:
        behavior_flags.BehaviorFlagRendered._default_source = staticmethod(patched)
    assert ours == theirs == {"pg_llm_probe": __name__}

