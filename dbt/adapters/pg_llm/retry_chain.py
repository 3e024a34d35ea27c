"""Which earlier invocations a `dbt retry` continues, so ``max_cost_usd_per_run`` spans them (decision 0025).

`dbt retry` gets a new invocation id (our run id), and while it runs dbt's flags say the *retried*
command (``run`` / ``build``), not ``retry``: RetryTask swaps them (dbt-core 1.11, task/retry.py).
What does say it: the click context of the command being invoked, current in the main thread
while RetryTask builds the adapter. The invocation it retries is the ``metadata.invocation_id``
of the ``run_results.json`` dbt retry reads (``--state`` or the target path, as RetryTask does).

A retry of a retry must continue the first run too, even when the middle one filled nothing (no
``llm_runs`` row to follow): each retry writes ``pg_llm_retry_chain.json`` beside the artifacts it
will write (``{"invocation_id": <its id>, "continues": [<parent>, <grandparent>, ...]}``), and the
next retry extends the chain when that file names its parent. A file left by an older retry names
another invocation and is ignored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Tuple

__all__ = ["retry_chain", "CHAIN_FILE"]

CHAIN_FILE = "pg_llm_retry_chain.json"
_RUN_RESULTS = "run_results.json"
_CHAINS: dict = {}  # invocation id -> its chain: worked out once (the file is rewritten with it)


def _current_click_context() -> Any:
    try:
        import click

        return click.get_current_context(silent=True)
    except Exception:  # no click, or not inside a command: not a retry
        return None


def _read_json(path: Path) -> Optional[dict]:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def retry_chain(config: Any, invocation_id: str) -> Tuple[str, ...]:
    """The invocation ids this invocation continues, newest first, when it is a `dbt retry` (else ()).

    ``config``: dbt's RuntimeConfig (``project_root``, ``target_path``). Writes the chain file into
    the target path for a later retry. Never raises: without a readable previous run the retry is
    a run of its own (dbt itself then stops with "Could not find previous run")."""
    if invocation_id in _CHAINS:
        return _CHAINS[invocation_id]
    ctx = _current_click_context()
    if ctx is None or getattr(ctx.command, "name", None) != "retry":
        return ()
    try:
        chain = _work_out(ctx, config, invocation_id)
    except Exception:  # a budget detail must never stop dbt from retrying: the retry then starts its own sum
        chain = ()
    _CHAINS[invocation_id] = chain
    return chain


def _work_out(ctx: Any, config: Any, invocation_id: str) -> Tuple[str, ...]:
    flags = (ctx.obj or {}).get("flags") if isinstance(ctx.obj, dict) else None
    root = Path(getattr(config, "project_root", None) or ".")
    state = getattr(flags, "STATE", None) or getattr(config, "target_path", None) or "target"
    previous = _read_json(root / Path(state) / _RUN_RESULTS)
    parent = ((previous or {}).get("metadata") or {}).get("invocation_id")
    if not isinstance(parent, str) or not parent or parent == invocation_id:
        return ()
    chain = [parent]
    earlier = _read_json(root / Path(state) / CHAIN_FILE)
    if earlier and earlier.get("invocation_id") == parent and isinstance(earlier.get("continues"), list):
        chain += [str(i) for i in earlier["continues"] if isinstance(i, str) and i not in chain]
    target = root / Path(getattr(config, "target_path", None) or "target")
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / CHAIN_FILE).write_text(json.dumps({"invocation_id": invocation_id, "continues": chain}))
    except OSError:  # a read-only target: this retry still continues its parent, a later one may not
        pass
    return tuple(chain)
