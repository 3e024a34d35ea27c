"""A copy of a dbt project driven in-process with dbtRunner, for the functional tests.

``DbtProject(path, pg, api_url, schema)`` runs dbt commands with the environment its profile reads
(integration_tests/profiles.yml: PG* for Postgres, LLM_* for the model) and queries Postgres.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

__all__ = ["DbtProject", "Out", "patched_env", "TIMINGS", "copy_integration_project", "seeded_project",
           "one_model_project"]

TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def patched_env(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Out:
    def __init__(self, result, text: str, warnings: list[str] | None = None):
        self.result = result
        self.success = result.success
        self.text = text
        self.warnings = warnings or []  # messages of warn-level events (what dbt shows as warnings)


class DbtProject:
    """A copy of integration_tests/ with the environment its profile reads."""

    def __init__(self, path: Path, pg, api_url: str, schema: str):
        self.path = path
        self.pg = pg
        self.schema = schema
        self.base_env = {
            "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": pg.password or "",
            "PGDATABASE": pg.dbname, "DBT_SCHEMA": schema, "DBT_THREADS": "4",
            "LLM_API_URL": api_url, "DBT_ENV_SECRET_LLM_API_KEY": "sim-key", "LLM_MODEL": "sim-small",
            "LLM_ON_ERROR": "null", "LLM_TEMPERATURE": "0",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        }
        self.llm_env: dict[str, str] = {}

    def env(self, **overrides) -> dict[str, str]:
        return {**self.base_env, **self.llm_env, **overrides}

    def run(self, *args: str, expect: bool | None = True, **env) -> Out:
        from dbt.cli.main import dbtRunner

        messages: list[str] = []
        warnings: list[str] = []

        def collect(event) -> None:
            messages.append(str(event.info.msg))
            if event.info.level == "warn":
                warnings.append(str(event.info.msg))

        started = time.monotonic()
        with patched_env(self.env(**env)):
            result = dbtRunner(callbacks=[collect]).invoke(
                [*args, "--project-dir", str(self.path), "--profiles-dir", str(self.path)])
        TIMINGS[" ".join(args[:2])] = TIMINGS.get(" ".join(args[:2]), 0.0) + time.monotonic() - started
        text = "\n".join(messages) + (f"\n{result.exception}" if result.exception else "")
        if expect is not None:
            assert result.success == expect, f"dbt {' '.join(args)}: success={result.success}\n{text[-6000:]}"
        return Out(result, text, warnings)

    def query(self, sql: str, params=None) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(**self.pg.connect_kwargs())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def scalar(self, sql: str, params=None):
        return self.query(sql, params)[0][0]

    @property
    def audit(self) -> str:
        return self.llm_env["LLM_AUDIT_SCHEMA"]

    def seed_table(self) -> str:
        return f'"{self.schema}".product_reviews'


REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "integration_tests"


def copy_integration_project(tmp_path_factory, pg, api_url: str, extra_models: dict[str, str]) -> DbtProject:
    """A copy of integration_tests/ with ``extra_models`` (file name -> text) under models/functional/,
    its own schema, audit schema and journal, seeded. ``proj.extra_schemas`` lists schemas to drop."""
    import shutil
    import uuid

    path = tmp_path_factory.mktemp("dbt_project") / "integration_tests"
    shutil.copytree(INTEGRATION, path, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".user.yml"))
    (path / "models" / "functional").mkdir()
    for name, text in extra_models.items():
        (path / "models" / "functional" / name).write_text(text.lstrip())
    proj = DbtProject(path, pg, api_url, schema=f"func_{uuid.uuid4().hex[:8]}")
    proj.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_seed_{uuid.uuid4().hex[:8]}",
                    "LLM_JOURNAL_DIR": str(tmp_path_factory.mktemp("journal_seed"))}
    proj.run("seed")
    proj.extra_schemas = []
    return proj


def seeded_project(tmp_path_factory, pg, api_url: str, extra_models: dict[str, str]):
    """For a module-scoped ``project`` fixture: ``yield from seeded_project(...)``. Afterwards the
    engines are closed and every schema the project made is dropped."""
    proj = copy_integration_project(tmp_path_factory, pg, api_url, extra_models)
    yield proj
    from dbt.adapters.pg_llm.engines import close_engines

    close_engines()
    for schema in [proj.schema, proj.llm_env.get("LLM_AUDIT_SCHEMA"), *proj.extra_schemas]:
        if schema:
            proj.query(f'drop schema if exists "{schema}" cascade')


def one_model_project(tmp_path: Path, pg, api_url: str, name: str, model_name: str, model_sql: str,
                      schema_prefix: str, **llm_env: str):
    """For a function-scoped fixture: ``yield from one_model_project(...)`` -> a project of one table
    model on the example profile, its own audit schema and journal; afterwards the engines are closed
    and both schemas dropped."""
    import shutil
    import uuid

    path = tmp_path / name
    (path / "models").mkdir(parents=True)
    shutil.copy(INTEGRATION / "profiles.yml", path / "profiles.yml")
    (path / "dbt_project.yml").write_text(
        f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\nprofile: pg_llm_integration\n"
        f"models:\n  {name}:\n    +materialized: table\n")
    (path / "models" / f"{model_name}.sql").write_text(model_sql)
    project = DbtProject(path, pg, api_url, schema=f"{schema_prefix}_{uuid.uuid4().hex[:8]}")
    project.llm_env = {"LLM_AUDIT_SCHEMA": f"llm_{schema_prefix}_{uuid.uuid4().hex[:8]}",
                       "LLM_JOURNAL_DIR": str(tmp_path / "journal"), **llm_env}
    yield project
    from dbt.adapters.pg_llm.engines import close_engines

    close_engines()
    for schema in (project.schema, project.audit):
        project.query(f'drop schema if exists "{schema}" cascade')
