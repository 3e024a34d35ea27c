{#-
  pg_llm.llm_enrich(relation, columns, model=none, on_error=none, mode=none)

  Select every column of `relation` (a Relation such as ref('x'), or a SQL query string) plus one
  column per entry of `columns` (column name -> spec from pg_llm.complete / classify / extract).
  Only `dbt run` / `build` / `retry` request missing answers (each distinct prompt once, cached in
  the audit schema); every other command just renders the join.
  mode='batch' sends the missing answers of every column (that sets no mode itself) through the
  provider's batch API (half price, answers within 24 h; see the README's "Large backfills").
-#}
{% macro llm_enrich(relation, columns, model=none, on_error=none, mode=none) -%}
  {{ return(adapter.dispatch('llm_enrich', 'pg_llm')(relation, columns, model=model, on_error=on_error, mode=mode)) }}
{%- endmacro %}

{% macro default__llm_enrich(relation, columns, model=none, on_error=none, mode=none) -%}
  {%- if columns is not mapping or columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("pg_llm.llm_enrich: `columns` must be a non-empty mapping of column name -> spec, e.g. {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative'])}") }}
  {%- endif -%}
  {%- if relation is string -%}
    {#- a query: used as a parenthesized subquery -#}
    {%- set source_sql = '(' ~ (relation | trim) ~ '\n)' -%}
  {%- else -%}
    {%- set source_sql = relation | string -%}
  {%- endif -%}
  {%- set resolved = [] -%}
  {%- for name, spec in columns.items() -%}
    {%- do resolved.append(adapter.llm_column(spec, default_model=model, name=name, mode=mode)) -%}
  {%- endfor -%}
  {%- if execute -%}
    {#- creates/migrates the audit schema the join reads (no LLM requests) -#}
    {%- do adapter.llm_prepare() -%}
  {%- endif -%}
  {%- if execute and flags.WHICH in ('run', 'build', 'retry') -%}
    {%- set node = context.get('model') -%}
    {%- do adapter.llm_fill(source_sql, resolved, on_error=on_error, node_id=(node.unique_id if node else none)) -%}
  {%- endif -%}
  {{ return(adapter.llm_join_sql(source_sql, resolved, on_error=on_error)) }}
{%- endmacro %}
