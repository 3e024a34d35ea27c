"""Operating the engine: the ``dbt-pg-llm`` command line (``cli``, ``journal_cli``), the HTML and
quality reports, and the garbage-collector policy for long dbt runs (``gc_policy``)."""
