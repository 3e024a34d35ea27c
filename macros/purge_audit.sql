{#-
  pg_llm.purge_audit(older_than_days)

  `dbt run-operation pg_llm.purge_audit --args '{older_than_days: 90}'` deletes, older than the cutoff:
  llm_calls rows (whole monthly partitions when possible), resolved llm_errors, finished llm_runs,
  llm_alerts, and llm_results rows that are invalid or expired. Valid cached answers are never
  deleted. Commits (on the adapter's own connection).
-#}
{% macro purge_audit(older_than_days) -%}
  {{ return(adapter.dispatch('purge_audit', 'pg_llm')(older_than_days)) }}
{%- endmacro %}

{% macro default__purge_audit(older_than_days) -%}
  {{ return(adapter.llm_purge_audit(older_than_days)) }}
{%- endmacro %}
