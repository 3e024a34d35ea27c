{#- The schema of the `vector` extension in the target database, or none (not installed, or parse time). -#}
{% macro vector_extension_schema() -%}
  {{ return(adapter.dispatch('vector_extension_schema', 'pg_llm')()) }}
{%- endmacro %}

{% macro default__vector_extension_schema() -%}
  {%- if not execute -%}{{ return(none) }}{%- endif -%}
  {%- set found = run_query("select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'") -%}
  {{ return(found.rows[0][0] if found.rows | length > 0 else none) }}
{%- endmacro %}
