{#- pg_llm.llm_sql_literal(value): a value as a SQL string literal (quotes doubled), for the generic tests' SQL. -#}
{% macro llm_sql_literal(value) -%}
  {{- "'" ~ (value | string).replace("'", "''") ~ "'" -}}
{%- endmacro %}
