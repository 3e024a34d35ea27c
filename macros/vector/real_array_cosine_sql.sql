{#- Cosine similarity of two real[] (or anything castable to real[]) in plain SQL: no extension, no
    function to install. Different lengths fail the statement with a message saying so (a cast of a
    non-constant text, so the planner cannot fold it); a NULL side or a zero vector gives NULL. -#}
{% macro real_array_cosine_sql(a, b) -%}
  {{ return(adapter.dispatch('real_array_cosine_sql', 'pg_llm')(a, b)) }}
{%- endmacro %}

{% macro default__real_array_cosine_sql(a, b) -%}
  {%- set x = '(' ~ a ~ ')::real[]' -%}
  {%- set y = '(' ~ b ~ ')::real[]' -%}
  {{ return("(case when cardinality(" ~ x ~ ") <> cardinality(" ~ y ~ ") then ('pg_llm.similarity: the two embeddings have different dimensions (' || cardinality(" ~ x ~ ") || ' vs ' || cardinality(" ~ y ~ ") || '); embed both sides with the same model and dimensions')::int::float8"
            ~ " else (select sum(pg_llm_x::float8 * pg_llm_y) / nullif(sqrt(sum(pg_llm_x::float8 * pg_llm_x)) * sqrt(sum(pg_llm_y::float8 * pg_llm_y)), 0)"
            ~ " from unnest(" ~ x ~ ", " ~ y ~ ") as pg_llm_t(pg_llm_x, pg_llm_y)) end)") }}
{%- endmacro %}
