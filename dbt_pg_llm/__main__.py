"""``python -m dbt_pg_llm ...``: see ``dbt_pg_llm.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
