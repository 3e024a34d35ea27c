{#-
  pg_llm.similarity(a, b) -> SQL expression: the cosine similarity (1 = same direction) of two
  embedding expressions, vector or real[] alike. With pgvector in the database: 1 - (a <=> b) on both
  sides cast to vector (so a real[] column works too); without it: the same number from unnest() over
  real[]. Different dimensions fail the statement (both ways); NULL in, NULL out.
-#}
{% macro similarity(a, b) -%}
  {{ return(adapter.dispatch('similarity', 'pg_llm')(a, b)) }}
{%- endmacro %}

{% macro default__similarity(a, b) -%}
  {{ return('(1 - ' ~ pg_llm.vector_distance_sql(a, b, pg_llm.vector_extension_schema()) ~ ')') }}
{%- endmacro %}
