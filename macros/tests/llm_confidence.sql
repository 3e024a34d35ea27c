{#-
  pg_llm.llm_confidence(min_confidence, max_share=0): at most `max_share` (0..1) of the answered rows
  have a confidence (llm_audit.llm_results.confidence: label logprobs, a cascade's or a vote's
  agreement) below `min_confidence`. An answer without a confidence counts as below (nothing vouches
  for it); rows without an answer are llm_filled's business and are not counted. When the share is
  exceeded the test returns the rows below, with their key, confidence and answering model.
-#}
{% test llm_confidence(model, column_name, min_confidence, max_share=0) %}
  {{ return(adapter.dispatch('test_llm_confidence', 'pg_llm')(model, column_name, min_confidence, max_share)) }}
{% endtest %}

{% macro default__test_llm_confidence(model, column_name, min_confidence, max_share=0) %}
  {%- set col = pg_llm.llm_test_column(column_name, 'llm_confidence') -%}
  {%- if col is none -%}
    select null::text as llm_key where false
  {%- else -%}
  {%- for arg, value in [('min_confidence', min_confidence), ('max_share', max_share)] -%}
    {%- if value is not number or value < 0 or value > 1 -%}
      {{ exceptions.raise_compiler_error("pg_llm.llm_confidence: " ~ arg ~ " of column '" ~ column_name ~ "' must be a number from 0 to 1, got " ~ value) }}
    {%- endif -%}
  {%- endfor -%}
with __llm_answered as (
    select __llm_k.llm_key, __llm_r.confidence, __llm_r.model as answered_by
    from (select * from {{ model }}) __llm_t
    cross join lateral (select {{ col.key_sql }} as llm_key) __llm_k
    join {{ col.audit }}.llm_results __llm_r on __llm_r.key = __llm_k.llm_key and {{ col.fresh }}
),
__llm_below as (
    select * from __llm_answered where confidence is null or confidence < {{ min_confidence }}
),
__llm_totals as (
    select (select count(*) from __llm_answered) as answered_rows, (select count(*) from __llm_below) as below_rows
)
select b.llm_key, b.confidence, b.answered_by, t.below_rows, t.answered_rows,
       round(t.below_rows::numeric / nullif(t.answered_rows, 0), 4) as below_share
from __llm_below b cross join __llm_totals t
where t.below_rows > {{ max_share }} * t.answered_rows
  {%- endif -%}
{% endmacro %}
