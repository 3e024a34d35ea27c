{#- `relation` as a FROM item: a Relation as is, a query string parenthesized. -#}
{% macro vector_from_sql(relation) -%}
  {{ return(adapter.dispatch('vector_from_sql', 'pg_llm')(relation)) }}
{%- endmacro %}

{% macro default__vector_from_sql(relation) -%}
  {{ return('(' ~ (relation | trim) ~ '\n)' if relation is string else relation | string) }}
{%- endmacro %}
