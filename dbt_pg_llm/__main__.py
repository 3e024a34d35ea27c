"""``python -m dbt_pg_llm ...``: see ``dbt_pg_llm.ops.cli``."""
import sys

from .ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
