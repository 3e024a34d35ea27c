"""The `pg_llm.core` plugin: a dependency of `pg_llm` whose only job is to ship an internal dbt project.

Why two projects (measured with dbt-core 1.11):

* A project is *internal* when its name equals the `project_name` of a plugin in the adapter's chain.
  Only internal ("Core") projects may override the built-in `table` / `incremental` materializations
  (an installed package's override is ignored since `require_explicit_package_overrides_for_builtin_
  materializations` became the default). Python models need those overrides.
* Macros of internal projects are only reachable unqualified: `pg_llm.llm_enrich(...)` and
  `adapter.dispatch('llm_enrich', 'pg_llm')` fail for an internal project named `pg_llm`.

So the public macros live in the `pg_llm` project (repository root, installed as dbt/include/pg_llm),
deliberately *not* internal (the main plugin's project_name differs from its name), and the
materializations live in `pg_llm_core` (./include), internal through this plugin. A plugin's adapter
type must equal the name it is loaded by, hence the tiny adapter subclass with TYPE "pg_llm.core":
it is never instantiated; dbt only reads its include path (and adds a harmless "pg_llm.core" entry to
the dispatch prefixes, which matches no macro).
"""
from pathlib import Path

from dbt.adapters.base import AdapterPlugin

from dbt.adapters.pg_llm.connections import PgLlmConnectionManager, PgLlmCredentials
from dbt.adapters.pg_llm.impl import PgLlmAdapter

NAME = "pg_llm.core"
PROJECT_NAME = "pg_llm_core"
INCLUDE_PATH = str(Path(__file__).resolve().parent / "include")


class _CoreConnectionManager(PgLlmConnectionManager):
    TYPE = NAME


class _CoreAdapter(PgLlmAdapter):
    ConnectionManager = _CoreConnectionManager


Plugin = AdapterPlugin(
    adapter=_CoreAdapter,  # type: ignore[arg-type]
    credentials=PgLlmCredentials,
    include_path=INCLUDE_PATH,
    dependencies=[],
    project_name=PROJECT_NAME,
)
