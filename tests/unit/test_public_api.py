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


# The engine's layers, each importing only those before it (DEVELOPERS.md: no import circles):
# urls and errors are the foundation, embedded_pg starts a server, models/ calls providers, pg/ keeps
# answers in Postgres, operators/ plan keyed calls over pg/, ops/ operates all of it, and the
# simulator (a separate process) answers the prompts the layers below it write.
LAYERS = ["urls", "errors", "embedded_pg", "models", "pg", "operators", "ops", "simulator"]


def _imports_by_layer():
    """(importing layer, imported layer, module, target) for every import inside dbt_pg_llm, lazy ones too."""
    import ast
    from pathlib import Path

    root = Path(dbt_pg_llm.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if len(parts) == 2 and parts[1] in ("__init__", "__main__"):
            continue  # the package's own face: re-exports every layer
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                targets = [".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                pieces = target.split(".")
                if pieces[0] == "dbt_pg_llm" and len(pieces) > 1:
                    yield parts[1], pieces[1], ".".join(parts), target


def test_each_layer_imports_only_the_layers_before_it():
    seen, wrong = set(), []
    for layer, imported, module, target in _imports_by_layer():
        seen.add((layer, imported))
        if layer != imported and not LAYERS.index(imported) < LAYERS.index(layer):
            wrong.append(f"{module} imports {target}")
    assert {("pg", "models"), ("operators", "pg"), ("models", "errors")} <= seen  # the walk sees real imports
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)
