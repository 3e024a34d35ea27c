{#- The pair prompt of the nested and blocked plans (the simulator's filter rule reads both sides from it). -#}
{% macro semantic_join_pair_sql(left_text_sql, right_text_sql) -%}
  {{ return("'Left: ' || " ~ left_text_sql ~ " || E'\\nRight: ' || " ~ right_text_sql) }}
{%- endmacro %}
