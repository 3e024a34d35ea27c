"""dbt's adapter conformance suite (dbt-tests-adapter) on `pg_llm`: the overridden table/incremental
materializations and everything inherited from dbt-postgres must behave like any adapter's.

dbt-tests-adapter comes with the dev extra; about 30 s.
"""
import pytest

from dbt.tests.fixtures.project import *  # noqa: E402,F401,F403  (dbt's `project` fixtures)
from dbt.tests.adapter.basic.test_adapter_methods import BaseAdapterMethod  # noqa: E402
from dbt.tests.adapter.basic.test_base import BaseSimpleMaterializations  # noqa: E402
from dbt.tests.adapter.basic.test_empty import BaseEmpty  # noqa: E402
from dbt.tests.adapter.basic.test_ephemeral import BaseEphemeral  # noqa: E402
from dbt.tests.adapter.basic.test_generic_tests import BaseGenericTests  # noqa: E402
from dbt.tests.adapter.basic.test_incremental import (  # noqa: E402
    BaseIncremental,
    BaseIncrementalNotSchemaChange,
)
from dbt.tests.adapter.basic.test_singular_tests import BaseSingularTests  # noqa: E402
from dbt.tests.adapter.basic.test_snapshot_check_cols import BaseSnapshotCheckCols  # noqa: E402
from dbt.tests.adapter.basic.test_snapshot_timestamp import BaseSnapshotTimestamp  # noqa: E402
from dbt.tests.adapter.basic.test_table_materialization import BaseTableMaterialization  # noqa: E402
from dbt.tests.adapter.basic.test_validate_connection import BaseValidateConnection  # noqa: E402


@pytest.fixture(scope="class")
def dbt_profile_target(pg, simulator, tmp_path_factory):
    return {
        "type": "pg_llm", "host": pg.host, "port": pg.port, "user": pg.user, "pass": pg.password or "",
        "dbname": pg.dbname, "threads": 2,
        "llm": {"default_model": "sim", "audit_schema": "llm_conformance",
                "journal_dir": str(tmp_path_factory.mktemp("journal")),
                "models": {"sim": {"api_url": simulator.base_url, "api_key": "sim-key", "model_version": "sim-small"}}},
    }


@pytest.fixture(scope="class")
def dbt_project_yml(project_root, project_config_update):
    """dbt's fixture of the same name, plus vars: {pg_llm_audit_sources: false}: the suite counts the
    manifest's sources exactly, and the pg_llm package ships the audit schema's."""
    import yaml
    from dbt.tests.util import write_file

    config = {"name": "test", "profile": "test", "flags": {"send_anonymous_usage_stats": False}}
    update = project_config_update
    config.update(yaml.safe_load(update) if isinstance(update, str) else dict(update or {}))
    config["vars"] = {**config.get("vars", {}), "pg_llm_audit_sources": False}
    write_file(yaml.safe_dump(config), project_root, "dbt_project.yml")
    return config


class TestSimpleMaterializations(BaseSimpleMaterializations):
    pass


class TestSingularTests(BaseSingularTests):
    pass


class TestEmpty(BaseEmpty):
    pass


class TestEphemeral(BaseEphemeral):
    pass


class TestIncremental(BaseIncremental):
    pass


class TestIncrementalNotSchemaChange(BaseIncrementalNotSchemaChange):
    pass


class TestGenericTests(BaseGenericTests):
    pass


class TestSnapshotCheckCols(BaseSnapshotCheckCols):
    pass


class TestSnapshotTimestamp(BaseSnapshotTimestamp):
    pass


class TestAdapterMethod(BaseAdapterMethod):
    pass


class TestTableMaterialization(BaseTableMaterialization):
    pass


class TestValidateConnection(BaseValidateConnection):
    pass
