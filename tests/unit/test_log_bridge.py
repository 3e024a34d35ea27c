"""The engine's Python logger goes through dbt's logger once the adapter is loaded (no raw stderr lines)."""
import logging

from dbt_common.events.base_types import EventLevel
from dbt_common.events.functions import get_event_manager


def test_engine_log_records_become_dbt_events_not_stderr_lines(capfd):
    from dbt.adapters.pg_llm import log_bridge
    from dbt.adapters.pg_llm.impl import logger

    events = []
    manager = get_event_manager()
    manager.add_callback(events.append)
    log_bridge.install(logger)  # what PgLlmAdapter.__init__ does
    try:
        logging.getLogger("dbt_pg_llm").warning("journal almost %s", "full")
        logging.getLogger("dbt_pg_llm.models.cache").error("could not store %d answers", 3)
    finally:
        manager.callbacks.remove(events.append)
        log_bridge.uninstall()
    messages = [(e.info.level, e.info.msg) for e in events]
    assert (EventLevel.WARN.value, "pg_llm adapter: journal almost full") in messages, messages
    assert (EventLevel.ERROR.value, "pg_llm adapter: could not store 3 answers") in messages, messages
    captured = capfd.readouterr()
    assert "WARNING:dbt_pg_llm" not in captured.err and "journal almost full" not in captured.err
