{#- The column names of a relation or query (a `limit 0` query; [] at parse time; none for a
    Relation that does not exist yet, e.g. `dbt compile` before the upstream models were built). -#}
{% macro vector_query_columns(relation) -%}
  {{ return(adapter.dispatch('vector_query_columns', 'pg_llm')(relation)) }}
{%- endmacro %}

{% macro default__vector_query_columns(relation) -%}
  {%- if not execute -%}{{ return([]) }}{%- endif -%}
  {%- if relation is not string and load_relation(relation) is none -%}{{ return(none) }}{%- endif -%}
  {{ return(run_query('select * from ' ~ pg_llm.vector_from_sql(relation) ~ ' as pg_llm_q limit 0').column_names | list) }}
{%- endmacro %}
