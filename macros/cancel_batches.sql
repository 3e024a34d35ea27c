{#- pg_llm.cancel_batches(): `dbt run-operation pg_llm.cancel_batches` asks the providers to cancel every open batch. -#}
{% macro cancel_batches() -%}
  {{ return(adapter.dispatch('cancel_batches', 'pg_llm')()) }}
{%- endmacro %}

{% macro default__cancel_batches() -%}
  {%- set rows = adapter.llm_batches(cancel=true) -%}
  {%- do log("pg_llm: " ~ rows | length ~ " batch(es) still open (cancelled ones close when the next run collects them)", info=true) -%}
  {{ return(rows) }}
{%- endmacro %}
