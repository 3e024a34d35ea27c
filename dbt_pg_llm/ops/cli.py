"""``python -m dbt_pg_llm``: commands for operating dbt-pg-llm outside a dbt run.

    python -m dbt_pg_llm report [--days 7]                 the per-model usage report, as text
    python -m dbt_pg_llm report --html report.html         one self-contained HTML page with charts
    python -m dbt_pg_llm journal --stats | --prune [--older-than-days N]   the local journal (journal_cli)

The connection comes from the dbt profile, like dbt's: ``--project-dir``, ``--profiles-dir``,
``--target``, ``--profile``, ``--vars``. The profile is read by the adapter package with dbt's own
machinery (``dbt.adapters.pg_llm.profile``), imported only when a command needs it: the engine
itself never imports dbt (docs/decisions/0014).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .journal_cli import add_journal_command, run_journal

__all__ = ["main"]


def _profile_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (from the dbt profile, as dbt reads it)")
    group.add_argument("--project-dir", help="the dbt project (default: the nearest folder with dbt_project.yml)")
    group.add_argument("--profiles-dir", help="where profiles.yml is (default: DBT_PROFILES_DIR, ./, ~/.dbt)")
    group.add_argument("--profile", help="the profile name (default: the project's `profile:`)")
    group.add_argument("--target", "-t", help="the target (default: the profile's `target:`)")
    group.add_argument("--vars", default="{}", help="dbt vars as YAML/JSON, e.g. '{audit: x}'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dbt_pg_llm", description="Operate dbt-pg-llm.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="usage per model from the audit schema (read-only)",
                                 description="Usage per model over the last DAYS days, read from the audit "
                                             "schema. Text on stdout, or --html FILE for a page with charts.")
    report.add_argument("--days", type=float, default=None, help="days back (default: 7 for text, 30 for --html)")
    report.add_argument("--html", metavar="FILE", help="write one self-contained HTML page with charts")
    _profile_args(report)
    add_journal_command(commands, _profile_args)
    return parser


def _credentials(args):
    try:
        from dbt.adapters.pg_llm.profile import credentials_from_profile
    except ImportError:  # pragma: no cover - the distribution ships both packages
        raise SystemExit("dbt-pg-llm's adapter package is missing: pip install dbt-pg-llm") from None
    return credentials_from_profile(project_dir=args.project_dir, profiles_dir=args.profiles_dir,
                                    target=args.target, profile=args.profile, cli_vars=args.vars)


def _report(args) -> int:
    from ..pg.usage_report import audit_schema_exists, format_usage, usage_by_model

    credentials = _credentials(args)
    schema = credentials.llm_settings().audit_schema
    days = args.days if args.days is not None else (30 if args.html else 7)
    conn = credentials.connect_autocommit()
    try:
        if not audit_schema_exists(conn, schema):
            print(f"the audit schema {schema} does not exist yet: it is created by the first run of an LLM model",
                  file=sys.stderr)
            return 1
        if args.html:
            from .html_report import render_report_html

            page = render_report_html(conn, schema, days)
            path = Path(args.html)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(page, encoding="utf-8")
            print(f"wrote {path} ({len(page) / 1e6:.1f} MB, {days:g} day(s) of {schema})")
        else:
            print(format_usage(usage_by_model(conn, schema, days), days, schema))
    finally:
        conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "journal":  # the profile is read only when --journal-dir is not given
            return run_journal(args, lambda: _credentials(args).llm_settings())
        return {"report": _report}[args.command](args)
    except (ValueError, ImportError) as exc:  # bad arguments, a profile problem (a ValueError), no plotly
        print(f"python -m dbt_pg_llm {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
