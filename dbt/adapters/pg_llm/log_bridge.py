"""Route the engine's Python logger (``dbt_pg_llm``) into dbt's own logger while the adapter is loaded.

The engine never imports dbt, so it logs with the standard ``logging`` module. Left alone, those
records reach stderr through Python's last-resort handler (or a root handler someone configured)
as raw ``WARNING:dbt_pg_llm:...`` lines that bypass dbt's log files, ``--quiet``, JSON logs and
callbacks. ``install()`` attaches one handler that re-fires each record through dbt's
``AdapterLogger`` at the same level, and stops propagation to the root logger.
"""
from __future__ import annotations

import logging

from dbt.adapters.events.logging import AdapterLogger

from dbt_pg_llm.errors import redact

__all__ = ["DbtLogHandler", "install", "uninstall"]

ENGINE_LOGGER = "dbt_pg_llm"


class DbtLogHandler(logging.Handler):
    """A logging.Handler that hands each record to dbt's AdapterLogger."""

    def __init__(self, adapter_logger: AdapterLogger):
        super().__init__(level=logging.DEBUG)
        self.adapter_logger = adapter_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                message = f"{message}: {record.exc_info[1]!r}"  # one line, never a traceback dump
            # keys and URL credentials out of dbt's log files whatever a library put in the text
            message = redact(message)
            if record.levelno >= logging.ERROR:
                self.adapter_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.adapter_logger.warning(message)
            elif record.levelno >= logging.INFO:
                self.adapter_logger.info(message)
            else:
                self.adapter_logger.debug(message)
        except Exception:  # logging must never fail the run
            self.handleError(record)


_installed: DbtLogHandler | None = None


def install(adapter_logger: AdapterLogger) -> DbtLogHandler:
    """Idempotent: the engine logger gets exactly one DbtLogHandler and stops propagating."""
    global _installed
    engine_logger = logging.getLogger(ENGINE_LOGGER)
    if _installed is None or _installed not in engine_logger.handlers:
        _installed = DbtLogHandler(adapter_logger)
        engine_logger.addHandler(_installed)
    engine_logger.propagate = False
    if engine_logger.level == logging.NOTSET:
        engine_logger.setLevel(logging.DEBUG)  # dbt's own log level decides what is shown
    return _installed


def uninstall() -> None:
    global _installed
    engine_logger = logging.getLogger(ENGINE_LOGGER)
    if _installed is not None:
        engine_logger.removeHandler(_installed)
        _installed = None
    engine_logger.propagate = True
