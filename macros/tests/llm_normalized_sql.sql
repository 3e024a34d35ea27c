{#- pg_llm.llm_normalized_sql(expr): SQL of `expr` as text compared loosely by llm_accuracy's 'normalized'
    comparison: lower case, every run of punctuation and spaces one space, trimmed. -#}
{% macro llm_normalized_sql(expr) -%}
  btrim(regexp_replace(lower(({{ expr }})::text), '[^[:alnum:]]+', ' ', 'g'))
{%- endmacro %}
