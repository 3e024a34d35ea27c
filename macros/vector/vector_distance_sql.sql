{#- Cosine distance (0 = same direction, 2 = opposite) of two embedding expressions.
    With pgvector: its `<=>` on both sides cast to vector (a no-op for vector columns, so an HNSW
    index on the column still serves ORDER BY distance). Without it: 1 - similarity over real[]. -#}
{% macro vector_distance_sql(a, b, vector_schema) -%}
  {{ return(adapter.dispatch('vector_distance_sql', 'pg_llm')(a, b, vector_schema)) }}
{%- endmacro %}

{% macro default__vector_distance_sql(a, b, vector_schema) -%}
  {%- if vector_schema -%}
    {%- set ns = adapter.quote(vector_schema) -%}
    {{ return('((' ~ a ~ ')::' ~ ns ~ '.vector operator(' ~ ns ~ '.<=>) (' ~ b ~ ')::' ~ ns ~ '.vector)') }}
  {%- else -%}
    {{ return('(1 - ' ~ pg_llm.real_array_cosine_sql(a, b) ~ ')') }}
  {%- endif -%}
{%- endmacro %}
