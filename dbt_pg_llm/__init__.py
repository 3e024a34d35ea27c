"""dbt-pg-llm engine: put LLM output into warehouse tables (plain Python, never imports dbt)."""
