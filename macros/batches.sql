{#- pg_llm.batches(): `dbt run-operation pg_llm.batches` lists the open provider batches (one log line each). -#}
{% macro batches() -%}
  {{ return(adapter.dispatch('batches', 'pg_llm')()) }}
{%- endmacro %}

{% macro default__batches() -%}
  {%- set rows = adapter.llm_batches() -%}
  {%- do log("pg_llm: " ~ rows | length ~ " open provider batch(es) in " ~ adapter.llm_audit_schema(), info=true) -%}
  {%- for r in rows -%}
    {#- subscripts, not attributes: r.keys on a dict is the dict's keys() method, not the entry -#}
    {%- do log("  " ~ r['batch'] ~ "  " ~ r['provider'] ~ "/" ~ r['model'] ~ "  " ~ r['status'] ~ "  " ~ r['keys'] ~ " keys  submitted " ~ r['submitted_at'] ~ "  by " ~ r['node_id'], info=true) -%}
  {%- endfor -%}
  {{ return(rows) }}
{%- endmacro %}
