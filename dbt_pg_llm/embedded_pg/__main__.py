"""``python -m dbt_pg_llm.embedded_pg start|stop|status|env``: runs `cli.main`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
