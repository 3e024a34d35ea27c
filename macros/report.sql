{#-
  dbt run-operation pg_llm.report --args '{days: 7}'

  Prints, per LLM model, what the last `days` days of the audit schema say: requests, errors by
  kind, p50/p95 latency, tokens, cost, cache hit rate, money saved by the cache, open alerts.
  Read-only: it runs selects on its own connection and commits nothing.
-#}
{% macro report(days=7) -%}
  {{ return(adapter.dispatch('report', 'pg_llm')(days=days)) }}
{%- endmacro %}

{% macro default__report(days=7) -%}
  {%- set text = adapter.llm_usage_report(days) -%}
  {%- do log(text, info=true) -%}
  {{ return(text) }}
{%- endmacro %}
