"""Shared fixtures: Postgres (embedded, or the user's own via PGHOST) and the LLM API simulator.

* ``pg`` (session): a `PgInfo`. If ``PGHOST`` is set, the server described by the PG* variables is
  used as is and never stopped. Otherwise the project-local embedded server (``<repo>/.pg/data``,
  see `dbt_pg_llm.embedded_pg`) is started, or adopted if already running, and released at the end
  (stopped unless another live process still uses it or it was started with the CLI).
* ``pg_conn`` (function): a psycopg2 autocommit connection whose ``search_path`` is a fresh schema
  (``conn.schema``, also the ``pg_schema`` fixture), dropped with everything in it afterwards.
* ``simulator`` (session): one in-process `SimulatorServer`; tests that look at its ledger should
  call ``simulator.reset()`` first.
* ``simulator_factory`` (function): ``simulator_factory(SimulatorConfig(...))`` starts an extra
  simulator, stopped after the test.
* ``in_threads`` (function): ``in_threads(fn, [args, ...])`` runs ``fn(*args)`` in one thread per
  args, all released at once (like dbt threads); returns the results in order, raises the first error.

Tests under tests/functional/ get the ``functional`` marker automatically.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

_FUNCTIONAL_DIR = Path(__file__).parent / "functional"


def _faster_behavior_flag_source() -> None:
    """dbt_common's ``BehaviorFlagRendered.__init__`` computes ``flag.get("source",
    self._default_source())``: the default runs for every flag of every adapter dbt builds, even
    when the flag names its source. It calls ``inspect.stack()``, which reads the source lines of
    every frame, and every file ``inspect.getmodule`` cannot place makes it scan all of
    ``sys.modules``. In this long pytest process (thousands of modules, deep dbtRunner stacks) a
    profile of the suite put 90% of a dbt test's time there. The replacement gives the same answer,
    the module of the first frame outside ``behavior_flags``, from each frame's globals. It is
    test-only: a `dbt` command is a short process where the scan is cheap.
    tests/unit/test_dbt_flag_source.py checks that it agrees with dbt's own."""
    import sys

    try:
        from dbt_common import behavior_flags
    except ImportError:  # pragma: no cover - dbt is a dependency of the project
        return
    original = behavior_flags.BehaviorFlagRendered._default_source

    def _default_source() -> str:
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_globals.get("__name__")
            if name and name != behavior_flags.__name__:
                return name
            frame = frame.f_back
        return "Unknown"

    _default_source.dbt_original = original  # type: ignore[attr-defined]
    behavior_flags.BehaviorFlagRendered._default_source = staticmethod(_default_source)


_faster_behavior_flag_source()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _FUNCTIONAL_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    from dbt_pg_llm.embedded_pg import EmbeddedPostgres, PgInfo

    user_server = PgInfo.from_env()
    if user_server is not None:
        import psycopg2

        try:
            psycopg2.connect(**user_server.connect_kwargs(), connect_timeout=10).close()
        except psycopg2.Error as exc:
            pytest.fail(
                f"PGHOST is set, so the tests use that server ({user_server.dsn()}), but connecting "
                f"failed: {exc}\nUnset PGHOST to use the embedded Postgres instead.",
                pytrace=False,
            )
        yield user_server
        return

    server = EmbeddedPostgres()
    info = server.start()
    try:
        yield info
    finally:
        server.release()


def _connection_class() -> type:
    import psycopg2.extensions

    class SchemaConnection(psycopg2.extensions.connection):
        schema: str = ""

    return SchemaConnection


@pytest.fixture
def pg_conn(pg: Any) -> Iterator[Any]:
    import psycopg2
    from psycopg2 import sql

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(**pg.connect_kwargs(), connection_factory=_connection_class())
    conn.autocommit = True
    conn.schema = schema
    with conn.cursor() as cur:
        cur.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("set search_path to {}").format(sql.Identifier(schema)))
    try:
        yield conn
    finally:
        if conn.closed:
            conn = psycopg2.connect(**pg.connect_kwargs())
        try:
            conn.rollback()  # in case the test turned autocommit off and left a failed transaction
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
        finally:
            conn.close()


@pytest.fixture
def db(pg: Any, pg_conn: Any) -> Iterator[tuple]:
    """(connect, source schema, audit schema) for fills: ``connect()`` opens a new connection each
    call (as fill_column wants); the audit schema ``<source schema>_audit`` is dropped afterwards."""
    import psycopg2

    audit = f"{pg_conn.schema}_audit"

    def connect() -> Any:
        return psycopg2.connect(**pg.connect_kwargs())

    yield connect, pg_conn.schema, audit
    with pg_conn.cursor() as cur:
        cur.execute(f'drop schema if exists "{audit}" cascade')


@pytest.fixture
def audit_schema_name(pg_conn: Any) -> Iterator[str]:
    """A fresh name for an audit schema (not created); the schema is dropped afterwards if it exists."""
    name = f"audit_{uuid.uuid4().hex[:10]}"
    yield name
    with pg_conn.cursor() as cur:
        cur.execute(f'drop schema if exists "{name}" cascade')


@pytest.fixture
def pg_schema(pg_conn: Any) -> str:
    """Name of the fresh schema `pg_conn` works in."""
    return pg_conn.schema


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    from dbt_pg_llm.simulator import SimulatorServer

    with SimulatorServer() as sim:
        yield sim


@pytest.fixture
def simulator_factory() -> Iterator[Callable[..., Any]]:
    from dbt_pg_llm.simulator import SimulatorServer

    started: list[Any] = []

    def make(config: Any = None, **kwargs: Any) -> Any:
        server = SimulatorServer(config=config, **kwargs)
        entered = server.__enter__()
        started.append(server)
        return entered if entered is not None else server

    try:
        yield make
    finally:
        for server in reversed(started):
            server.__exit__(None, None, None)


@pytest.fixture
def in_threads() -> Callable[..., list]:
    def run(fn: Callable[..., Any], arg_lists: list[tuple], timeout_s: float = 120.0) -> list:
        barrier = threading.Barrier(len(arg_lists))
        results: list[Any] = [None] * len(arg_lists)
        errors: list[BaseException] = []

        def worker(i: int, args: tuple) -> None:
            try:
                barrier.wait(timeout_s)
                results[i] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i, a)) for i, a in enumerate(arg_lists)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout_s)
        if errors:
            raise errors[0]
        return results

    return run
