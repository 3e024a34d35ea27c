"""dbt adapter plugin `type: pg_llm`: dbt-postgres plus LLM-filled columns (see dbt_pg_llm for the engine)."""
from pathlib import Path

from dbt.adapters.base import AdapterPlugin

from dbt.adapters.pg_llm.connections import PgLlmConnectionManager, PgLlmCredentials  # noqa: F401
from dbt.adapters.pg_llm.impl import PgLlmAdapter


def _include_path() -> str:
    """The public `pg_llm` dbt project (dbt_project.yml + macros/: pg_llm.llm_enrich & co.).

    An installed wheel carries it next to this package as dbt/include/pg_llm (pyproject force-include).
    An editable checkout has no such folder beside the sources: the repository root is the project.
    """
    here = Path(__file__).resolve().parent          # .../dbt/adapters/pg_llm
    installed = here.parent.parent / "include" / "pg_llm"
    if (installed / "dbt_project.yml").is_file() and (installed / "macros").is_dir():
        return str(installed)
    root = here.parents[2]                          # the checkout holding dbt/ and dbt_pg_llm/
    if (root / "dbt_project.yml").is_file() and (root / "macros").is_dir():
        return str(root)
    raise RuntimeError(
        f"dbt-pg-llm: cannot find the pg_llm dbt project (dbt_project.yml + macros/) in {installed} or {root}; "
        "reinstall the package"
    )


PACKAGE_PATH = _include_path()

Plugin = AdapterPlugin(
    adapter=PgLlmAdapter,  # type: ignore[arg-type]
    credentials=PgLlmCredentials,
    include_path=PACKAGE_PATH,
    # pg_llm.core ships the internal project with the materializations (see core.py for why).
    dependencies=["pg_llm.core", "postgres"],
    # Deliberately NOT the project's name (`pg_llm`): that keeps the public macros a regular package,
    # so `pg_llm.llm_enrich(...)` and adapter.dispatch('llm_enrich', 'pg_llm') work.
    project_name="dbt_pg_llm",
)
