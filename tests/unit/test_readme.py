"""The README's profile example is a valid llm: block (docs that drift from the code mislead users)."""
import re
from pathlib import Path

import yaml

from dbt_pg_llm import LlmSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_profile_example_parses():
    text = README.read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"\"\{\{[^}]*URL[^}]*\}\}\"", '"https://hooks.example/from-env"', block)  # URLs from env_var
    block = re.sub(r"\"\{\{.*?\}\}\"", '"from-env"', block)  # env_var(...) calls, as dbt would render them
    profile = yaml.safe_load(block)
    settings = LlmSettings.from_dict(profile["my_project"]["outputs"]["prod"]["llm"])
    assert settings.model_for_default == "gpt"
    assert set(settings.strategies) == {"smart", "panel", "by_task", "best_for_task", "measured", "sure"}
    assert settings.strategies["measured"].scores_source == "from_evaluations"
    assert (settings.strategies["sure"].target_accuracy, settings.strategies["sure"].sample_size) == (0.9, 400)
    assert settings.strategies["best_for_task"].candidates("extract") == ("claude", "gpt")
    assert settings.alert_webhook is not None and settings.alert_webhook.url == "https://hooks.example/from-env"
    assert settings.models["gpt"].fallbacks == ("claude",)
    assert settings.models["gpt"].batch.min_keys == 1000 and not settings.models["gpt"].batch.enabled


def test_readme_batch_example_parses():
    text = README.read_text(encoding="utf-8").split("## Large backfills with batch APIs", 1)[1]
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0].replace("# ... as above", "")
    gpt = yaml.safe_load(block)["models"]["gpt"]
    settings = LlmSettings.from_dict({"models": {"gpt": {"api_url": "https://api.openai.com/v1",
                                                         "model_version": "gpt-4o-mini", **gpt}}})
    assert settings.models["gpt"].batch.enabled and settings.models["gpt"].batch.poll_s == 60


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_operating_it_lists_real_commands():
    import contextlib
    import io

    from dbt_pg_llm.ops.cli import main

    text = README.read_text(encoding="utf-8")
    section = _section(text, "Operating it")
    for command in ("dbt debug", "dbt run-operation pg_llm.report --args '{days: 7}'",
                    "python -m dbt_pg_llm report --html report.html", "dbt show", "webhook_url"):
        assert command in section, command
    macros = Path(README.parent, "macros", "report.sql").read_text()
    assert "macro report(days=7)" in macros
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["report", "--help"])
    assert "--html" in out.getvalue() and "--profiles-dir" in out.getvalue() and "--target" in out.getvalue()


def test_readme_says_what_newcomers_hit():
    text = README.read_text(encoding="utf-8")
    use = _section(text, "Use it in your dbt project")
    python_models = use.index("Python models get the")
    assert "pip install 'dbt-pg-llm[python-models]'" in use[python_models:python_models + 400]
    profile_end = use.index("```", use.index("```yaml") + 7)
    note = use[profile_end:profile_end + 800]  # right after the profile example
    assert "`target.type` is `pg_llm`" in note and "target.type in ('postgres', 'pg_llm')" in note
    assert "adapter.dispatch" in note


def test_demo_says_its_answers_come_from_the_simulator():
    import subprocess
    import sys

    demo = README.parent / "integration_tests" / "demo.py"
    out = subprocess.run([sys.executable, str(demo), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "simulator, not from a real model" in " ".join(out.stdout.split()) and "synthetic" in out.stdout


def test_readme_providers_examples_are_valid_model_configs():
    from dbt_pg_llm import ModelConfig

    section = README.read_text(encoding="utf-8").split("## Providers\n", 1)[1].split("\n## ", 1)[0]
    block = re.sub(r"\"\{\{.*?\}\}\"", '"from-env"', section.split("```yaml\n", 1)[1].split("```", 1)[0])
    models = yaml.safe_load(block)["models"]
    configs = {name: ModelConfig.from_dict(raw, f"models.{name}") for name, raw in models.items()}
    assert configs["azure_gpt"].provider == "azure" and configs["claude"].provider == "anthropic"
    table = section.split("```yaml", 1)[0]
    for name in models:  # every example is named in the table
        assert f"`{name}`" in table


def test_readme_install_line_is_one_pip_accepts_with_the_extras():
    """Was `pip install "dbt-pg-llm @ git+<this repository>"`: a placeholder inside the requirement,
    which pip rejects ("Invalid URL"); the line to copy must be a real requirement."""
    import shlex

    import pytest
    from packaging.requirements import Requirement

    use = _section(README.read_text(encoding="utf-8"), "Use it in your dbt project")
    block = use.split("```bash\n", 1)[1].split("```", 1)[0]
    installs = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.startswith("pip install")]
    assert len(installs) == 1, block
    target = installs[0][2]
    assert "<" not in target and ">" not in target, target
    path, _, extras = target.partition("[")
    assert path.startswith("./") or path.startswith("/"), target  # a local checkout: any pip installs it
    requirement = Requirement("dbt-pg-llm[" + extras)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    optional = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert requirement.extras == {"python-models", "report"} and requirement.extras <= set(optional)
