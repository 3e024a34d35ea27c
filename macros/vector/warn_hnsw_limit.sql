{#- An HNSW index scan yields at most hnsw.ef_search rows (pgvector's default 40): a larger k would be
    cut silently, so say which pre-hook raises it (a SET from here would outlive the model on dbt's
    reused connection). Only with pgvector; an exact scan is not affected. -#}
{% macro warn_hnsw_limit(k, caller_name, vector_schema) -%}
  {{ return(adapter.dispatch('warn_hnsw_limit', 'pg_llm')(k, caller_name, vector_schema)) }}
{%- endmacro %}

{% macro default__warn_hnsw_limit(k, caller_name, vector_schema) -%}
  {%- if vector_schema and k > 40 -%}
    {%- do exceptions.warn("pg_llm." ~ caller_name ~ ": k=" ~ k ~ " is above pgvector's default hnsw.ef_search (40); an HNSW index scan returns at most ef_search rows, so add pre_hook=\"set hnsw.ef_search = " ~ k ~ "\" to the model's config (an exact scan is not affected)") -%}
  {%- endif -%}
{%- endmacro %}
