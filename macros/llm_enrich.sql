{#-
  pg_llm.llm_enrich(relation, columns, model=none, on_error=none, mode=none, keep_keys=false)

  Select every column of `relation` (a Relation such as ref('x'), or a SQL query string) plus one
  column per entry of `columns` (column name -> spec from pg_llm.complete / classify / extract, or
  pg_llm.embed: a vector(d) column, real[] without pgvector).
  Only `dbt run` / `build` / `retry` request missing answers (each distinct prompt once, cached in
  the audit schema); every other command just renders the join.
  mode='batch' sends the missing answers of every column (that sets no mode itself) through the
  provider's batch API (half price, answers within 24 h; see the README's "Large backfills").
  keep_keys=true adds `<column>__llm_key` per LLM column: join it to llm_audit.llm_results to explain a value.
  With the var pg_llm_estimate true (`dbt compile --select ... --vars '{pg_llm_estimate: true}'`) the
  missing keys are only counted and priced (no request); a run/build in that mode stops the model
  before it touches its table.
-#}
{% macro llm_enrich(relation, columns, model=none, on_error=none, mode=none, keep_keys=false) -%}
  {{ return(adapter.dispatch('llm_enrich', 'pg_llm')(relation, columns, model=model, on_error=on_error, mode=mode, keep_keys=keep_keys)) }}
{%- endmacro %}

{% macro default__llm_enrich(relation, columns, model=none, on_error=none, mode=none, keep_keys=false) -%}
  {%- if not execute -%}
    {#- parse time: tag the model `llm` (added to its own tags), so `--select tag:llm` selects every
        model that enriches, e.g. `dbt compile --select tag:llm --vars '{pg_llm_estimate: true}'` -#}
    {%- do config(tags=['llm']) -%}
    {#- and record each LLM column's spec in the model's meta (one key per column, `pg_llm:<name>`:
        dbt merges meta shallowly, so two llm_enrich calls in one model keep each other's columns):
        the generic tests (pg_llm.llm_filled, llm_confidence, llm_accuracy) name only the column and
        re-derive each row's key from it, with the settings of their own invocation -#}
    {%- if columns is mapping -%}
      {%- set recorded = {} -%}
      {%- for name, spec in columns.items() -%}
        {%- do recorded.update({'pg_llm:' ~ name: {'spec': spec, 'default_model': model, 'mode': mode}}) -%}
      {%- endfor -%}
      {%- do config(meta=recorded) -%}
    {%- endif -%}
  {%- endif -%}
  {%- if columns is not mapping or columns | length == 0 -%}
    {{ exceptions.raise_compiler_error("pg_llm.llm_enrich: `columns` must be a non-empty mapping of column name -> spec, e.g. {'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative'])}") }}
  {%- endif -%}
  {%- if relation is string -%}
    {#- a query: used as a parenthesized subquery. A bare name (a CTE of the model, a table) is not a
        query: it would reach Postgres as "(name)" and fail with a raw syntax error, so say what to pass. -#}
    {%- if not modules.re.match('^\\s*((--[^\\n]*\\n|/[*].*?[*]/)\\s*)*(\\(|(select|with|values|table)\\b)', relation, modules.re.IGNORECASE + modules.re.DOTALL) -%}
      {{ exceptions.raise_compiler_error("pg_llm.llm_enrich: the first argument " ~ (relation | trim)[:80] ~ " is neither a relation nor a query. Pass a relation, ref('model') or source('source', 'table'), or a query as text starting with select / with / values / table, e.g. 'select * from my_schema.my_table'. A CTE of this model cannot be used: the missing answers are read by a query of its own, outside this statement; move the CTE into the query text or into a model of its own.") }}
    {%- endif -%}
    {%- set source_sql = '(' ~ (relation | trim) ~ '\n)' -%}
  {%- else -%}
    {%- set source_sql = relation | string -%}
  {%- endif -%}
  {%- set resolved = [] -%}
  {%- set embeds = [] -%}  {#- pg_llm.embed columns: vectors, filled and joined on their own (llm_embeddings) -#}
  {%- for name, spec in columns.items() -%}
    {%- if spec is mapping and spec.get('kind') == 'embed' -%}
      {%- do embeds.append(adapter.llm_embed_column(spec, default_model=model, name=name, mode=mode)) -%}
    {%- else -%}
      {%- do resolved.append(adapter.llm_column(spec, default_model=model, name=name, mode=mode)) -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if execute -%}
    {#- creates/migrates the audit schema the join reads (no LLM requests) -#}
    {%- do adapter.llm_prepare() -%}
  {%- endif -%}
  {%- set node = context.get('model') -%}
  {%- set node_id = node.unique_id if node else none -%}
  {%- if execute and var('pg_llm_estimate', false) -%}
    {#- estimate mode: count and price the missing keys, request nothing -#}
    {%- if resolved -%}{%- do adapter.llm_estimate(source_sql, resolved, node_id=node_id) -%}{%- endif -%}
    {%- if embeds -%}{%- do adapter.llm_embed_estimate(source_sql, embeds, node_id=node_id) -%}{%- endif -%}
    {%- if flags.WHICH in ('run', 'build', 'retry') -%}
      {{ exceptions.raise_compiler_error("pg_llm: estimate mode (var pg_llm_estimate): the estimate is logged above; nothing was requested and the model's table was left unchanged. Use `dbt compile --select <models> --vars '{pg_llm_estimate: true}'` to estimate without failing models.") }}
    {%- endif -%}
  {%- elif execute and flags.WHICH in ('run', 'build', 'retry') -%}
    {%- if resolved -%}{%- do adapter.llm_fill(source_sql, resolved, on_error=on_error, node_id=node_id) -%}{%- endif -%}
    {%- if embeds -%}{%- do adapter.llm_embed_fill(source_sql, embeds, on_error=on_error, node_id=node_id) -%}{%- endif -%}
  {%- elif execute -%}
    {#- show / compile: say (once per invocation) that uncached keys stay empty -#}
    {%- do adapter.llm_note_unfilled() -%}
  {%- endif -%}
  {%- set joined = adapter.llm_join_sql(source_sql, resolved, on_error=on_error, keep_keys=keep_keys) if resolved else 'select * from ' ~ source_sql ~ ' __llm_src' -%}
  {%- if embeds -%}
    {{ return(adapter.llm_embed_join_sql(joined, embeds, check_vector=execute)) }}
  {%- endif -%}
  {{ return(joined) }}
{%- endmacro %}
