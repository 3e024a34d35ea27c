{#-
  pg_llm.llm_filled(max_failed_share=0): at most `max_failed_share` (0..1) of the model's rows have an
  LLM column without an answer although their prompt is not NULL: the request failed, the spend cap
  skipped it, or a batch has not answered yet (a NULL prompt is not a failure). When the share is
  exceeded the test returns the failing rows, each with its key and the dead letter's error kind and
  message (llm_errors), so dbt counts them (warn_if / error_if / severity / store_failures apply).
  A row also fails when it got the on_error default literal instead of an answer.
-#}
{% test llm_filled(model, column_name, max_failed_share=0) %}
  {{ return(adapter.dispatch('test_llm_filled', 'pg_llm')(model, column_name, max_failed_share)) }}
{% endtest %}

{% macro default__test_llm_filled(model, column_name, max_failed_share=0) %}
  {%- set col = pg_llm.llm_test_column(column_name, 'llm_filled') -%}
  {%- if col is none -%}
    select null::text as llm_key where false
  {%- else -%}
  {%- if max_failed_share is not number or max_failed_share < 0 or max_failed_share > 1 -%}
    {{ exceptions.raise_compiler_error("pg_llm.llm_filled: max_failed_share of column '" ~ column_name ~ "' must be a number from 0 to 1 (the share of rows allowed without an answer), got " ~ max_failed_share) }}
  {%- endif -%}
with __llm_rows as (
    select __llm_k.llm_key, __llm_t.{{ adapter.quote(column_name) }} is null as llm_value_null
    from (select * from {{ model }}) __llm_t
    cross join lateral (select {{ col.key_sql }} as llm_key) __llm_k
),
__llm_failed as (
    select llm_key from __llm_rows __llm_x
    where llm_key is not null
      and (llm_value_null or not exists (select 1 from {{ col.audit }}.llm_results __llm_r
                                         where __llm_r.key = __llm_x.llm_key and {{ col.fresh }}))
),
__llm_totals as (
    select (select count(*) from __llm_rows) as total_rows, (select count(*) from __llm_failed) as failed_rows
)
select f.llm_key, coalesce(e.error_kind, 'missing') as error_kind,
       coalesce(e.message, 'no answer in ' || {{ pg_llm.llm_sql_literal(col.audit_name) }} || '.llm_results and no dead letter: a provider batch still pending, or the table was built before the answer arrived; run the model again') as error_message,
       e.last_seen as error_last_seen,
       t.failed_rows, t.total_rows, round(t.failed_rows::numeric / nullif(t.total_rows, 0), 4) as failed_share
from __llm_failed f
cross join __llm_totals t
left join lateral (
    select d.error_kind, d.message, d.last_seen from {{ col.audit }}.llm_errors d
    where d.key = f.llm_key and d.resolved_at is null
    order by (d.node_id = {{ pg_llm.llm_sql_literal(col.node_id) }}) desc, d.last_seen desc limit 1
) e on true
where t.failed_rows > {{ max_failed_share }} * t.total_rows
  {%- endif -%}
{% endmacro %}
