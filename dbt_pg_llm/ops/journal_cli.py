"""``python -m dbt_pg_llm journal --stats | --prune [--older-than-days N]``: the local journal.

The journal (diskcache under ``llm.journal_dir``, see ``journal.DiskJournal``) holds every paid answer
before it reaches ``llm_results``. ``--stats`` prints its size, entries (valid / invalidated /
expired) and oldest entry; ``--prune`` deletes the entries that can never be served again
(invalidated by ``pg_llm.invalidate``, or expired), and with ``--older-than-days N`` also those
older than N days (their answers stay in ``llm_results``).

Where the journal is: ``--journal-dir``, else the profile's ``llm.journal_dir`` (when the
``python -m dbt_pg_llm`` CLI hands in a settings loader reading the dbt profile), else the default
(``LlmSettings.journal_path()``: the user's cache directory).

Hook for the main CLI (``dbt_pg_llm/cli.py``)::

    add_journal_command(commands, _profile_args)            # in _parser()
    "journal": lambda a: run_journal(a, lambda: _credentials(a).llm_settings())   # in main()
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Callable

__all__ = ["add_journal_command", "run_journal", "main"]


def _add_options(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--stats", action="store_true", help="size, entries and oldest entry")
    action.add_argument("--prune", action="store_true", help="delete invalidated and expired entries")
    parser.add_argument("--older-than-days", type=float, default=None,
                        help="with --prune: also delete entries older than this many days")
    parser.add_argument("--journal-dir", help="the journal directory (default: the profile's llm.journal_dir)")


def add_journal_command(commands, profile_args: Callable[[argparse.ArgumentParser], None] | None = None):
    """Add the ``journal`` subcommand to the CLI's subparsers (``profile_args`` adds the profile options)."""
    parser = commands.add_parser("journal", help="the local journal of paid answers: --stats or --prune",
                                 description=__doc__.split("\n\n")[1])
    _add_options(parser)
    if profile_args is not None:
        profile_args(parser)
    return parser


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def run_journal(args, load_settings: Callable[[], object] | None = None) -> int:
    """Run ``journal`` for parsed ``args``; ``load_settings()`` gives the profile's LlmSettings."""
    from ..models.journal import DiskJournal, JournalError, journal_stats, prune_journal
    from ..models.settings import LlmSettings

    if args.older_than_days is not None and (not args.prune or args.older_than_days < 0):
        print("python -m dbt_pg_llm journal: --older-than-days goes with --prune and must be >= 0",
              file=sys.stderr)
        return 2
    if args.journal_dir:
        directory = args.journal_dir
    else:
        settings = load_settings() if load_settings is not None else LlmSettings()
        directory = str(settings.journal_path())
    try:
        journal = DiskJournal(directory)
    except Exception as exc:
        print(f"python -m dbt_pg_llm journal: {JournalError(directory, exc, doing='open')}", file=sys.stderr)
        return 1
    with journal:
        if args.prune:
            older = args.older_than_days * 86400.0 if args.older_than_days is not None else None
            removed = prune_journal(journal, time.time(), older)
            print(f"pruned {removed} entr{'y' if removed == 1 else 'ies'} from the journal at {directory}")
        stats = journal_stats(journal)
    print(f"journal {directory}: {stats['entries']} entries ({stats['valid']} valid, {stats['invalid']} "
          f"invalidated, {stats['expired']} expired), {stats['bytes'] / 1e6:.2f} MB, oldest "
          f"{_when(stats['oldest'])}, newest {_when(stats['newest'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone: ``python -m dbt_pg_llm.ops.journal_cli --stats --journal-dir DIR``."""
    parser = argparse.ArgumentParser(prog="python -m dbt_pg_llm.ops.journal_cli", description=__doc__.split("\n\n")[1])
    _add_options(parser)
    return run_journal(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
