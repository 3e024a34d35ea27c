"""Fixtures of the dbt test modules (each defines its own module-scoped ``project``, a seeded copy
of integration_tests/ from ``dbt_harness.copy_integration_project``)."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def fresh_llm(project, simulator, tmp_path):
    """A new audit schema + journal (so a new cache and Engine), and a zeroed simulator ledger."""
    audit = f"llm_t_{uuid.uuid4().hex[:10]}"
    project.llm_env = {"LLM_AUDIT_SCHEMA": audit, "LLM_JOURNAL_DIR": str(tmp_path / "journal")}
    project.extra_schemas.append(audit)
    simulator.reset()
    yield project
    project.query(f'drop schema if exists "{audit}" cascade')
