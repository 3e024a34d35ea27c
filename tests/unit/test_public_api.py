"""The engine's public surface: an explicit __all__, and no dbt import anywhere in it."""
import pkgutil
import subprocess
import sys

import dbt_pg_llm


def test_all_is_explicit_and_importable():
    assert len(dbt_pg_llm.__all__) == len(set(dbt_pg_llm.__all__))
    for name in dbt_pg_llm.__all__:
        assert getattr(dbt_pg_llm, name) is not None, name
    for required in ("ModelConfig", "Model", "ModelInput", "ModelOutput", "BatchInput", "BatchOutput",
                     "ModelRegistry", "ModelStatus", "ModelError", "ErrorKind", "RetryPolicy", "Failover",
                     "RequestPool", "ResultCache", "ModelMetrics", "ModelLog", "ModelAlert", "should_alert",
                     "Engine"):
        assert required in dbt_pg_llm.__all__, required


def test_engine_never_imports_dbt():
    modules = [m.name for m in pkgutil.walk_packages(dbt_pg_llm.__path__, "dbt_pg_llm.")]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m == 'dbt' or m.startswith('dbt.'))\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(modules) > 15
    assert result.stdout.strip() == "", f"dbt modules imported by the engine: {result.stdout}"
