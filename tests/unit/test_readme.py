"""The README's profile example is a valid llm: block (docs that drift from the code mislead users)."""
import re
from pathlib import Path

import yaml

from dbt_pg_llm import LlmSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_profile_example_parses():
    text = README.read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"\"\{\{.*?\}\}\"", '"from-env"', block)  # env_var(...) calls, as dbt would render them
    profile = yaml.safe_load(block)
    settings = LlmSettings.from_dict(profile["my_project"]["outputs"]["prod"]["llm"])
    assert settings.model_for_default == "gpt"
    assert set(settings.strategies) == {"smart", "panel", "by_task"}
    assert settings.models["gpt"].fallbacks == ("claude",)
    assert settings.models["gpt"].batch.min_keys == 1000 and not settings.models["gpt"].batch.enabled


def test_readme_batch_example_parses():
    text = README.read_text(encoding="utf-8").split("## Large backfills with batch APIs", 1)[1]
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0].replace("# ... as above", "")
    gpt = yaml.safe_load(block)["models"]["gpt"]
    settings = LlmSettings.from_dict({"models": {"gpt": {"api_url": "https://api.openai.com/v1",
                                                         "model_version": "gpt-4o-mini", **gpt}}})
    assert settings.models["gpt"].batch.enabled and settings.models["gpt"].batch.poll_s == 60


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
