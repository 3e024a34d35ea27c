{#-
  pg_llm.llm_aggregate(relation, group_by, text_sql, instructions, model=none, schema=none, order_by=none,
                       max_input_tokens=4000, chunk_rows=none, fan_in=4, max_tokens=none,
                       answer_column='answer', on_error=none, alias='pg_llm_aggregate')

  A subquery named `alias` (give each of several in one model its own): one row per group of `relation` (a Relation such as ref('reviews'), or a query as text): the
  `group_by` column and `answer_column`, the LLM's answer over all the group's `text_sql` values
  (text; jsonb valid for `schema` when given), following `instructions`. Use it as a model's query:
    select * from {{ pg_llm.llm_aggregate(ref('reviews'), 'product_id', 'review_text', 'Summarise the main complaints') }}
  A group whose texts exceed `max_input_tokens` is reduced hierarchically (decision 0037): chunks of
  rows in a deterministic order (`order_by`, an expression; else by each row's hash) cut where a row's
  hash is 0 mod `chunk_rows` or the chunk would pass the budget, one request per chunk, then one per
  parent of `fan_in` or so partial answers, level after level. Every step is an llm_results key (its
  prompt: the instructions + its texts), filled through the one fill (claims, spend cap, estimate
  with var pg_llm_estimate, llm_calls, dead letters): adding rows re-pays their chunks and the path
  to the root. A failed step: the group's answer is NULL (dead letter, retried next run), other
  groups are unaffected; on_error='fail' fails the model.
-#}
{% macro llm_aggregate(relation, group_by, text_sql, instructions, model=none, schema=none, order_by=none, max_input_tokens=4000, chunk_rows=none, fan_in=4, max_tokens=none, answer_column='answer', on_error=none, alias='pg_llm_aggregate') -%}
  {{ return(adapter.dispatch('llm_aggregate', 'pg_llm')(relation, group_by, text_sql, instructions, model=model, schema=schema, order_by=order_by, max_input_tokens=max_input_tokens, chunk_rows=chunk_rows, fan_in=fan_in, max_tokens=max_tokens, answer_column=answer_column, on_error=on_error, alias=alias)) }}
{%- endmacro %}

{% macro default__llm_aggregate(relation, group_by, text_sql, instructions, model=none, schema=none, order_by=none, max_input_tokens=4000, chunk_rows=none, fan_in=4, max_tokens=none, answer_column='answer', on_error=none, alias='pg_llm_aggregate') -%}
  {%- set args = {'group_by': group_by, 'text_sql': text_sql, 'instructions': instructions, 'model': model,
                  'schema': schema, 'order_by': order_by, 'max_input_tokens': max_input_tokens,
                  'chunk_rows': chunk_rows, 'fan_in': fan_in, 'max_tokens': max_tokens, 'answer_column': answer_column} -%}
  {%- do adapter.llm_aggregate(args) -%}  {#- a compile error naming each bad argument, at parse time too -#}
  {%- if not execute -%}
    {%- do config(tags=['llm']) -%}
    {{ return('(select null::text as ' ~ adapter.quote(group_by) ~ ', null::text as ' ~ adapter.quote(answer_column) ~ ') as ' ~ adapter.quote(alias)) }}
  {%- endif -%}
  {%- set source_sql = pg_llm.vector_from_sql(relation) -%}  {#- a query string parenthesized, a Relation as is -#}
  {%- set node = context.get('model') -%}
  {%- set estimate = var('pg_llm_estimate', false) -%}
  {%- set query = adapter.llm_aggregate(args, source_sql, on_error=on_error, node_id=node.unique_id if node else none, estimate=estimate) -%}
  {%- if estimate and flags.WHICH in ('run', 'build', 'retry') -%}
    {{ exceptions.raise_compiler_error("pg_llm: estimate mode (var pg_llm_estimate): the estimate is logged above; nothing was requested and the model's table was left unchanged. Use `dbt compile --select <models> --vars '{pg_llm_estimate: true}'` to estimate without failing models.") }}
  {%- endif -%}
  {{ return('(' ~ query ~ '\n) as ' ~ adapter.quote(alias)) }}
{%- endmacro %}
