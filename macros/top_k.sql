{#-
  pg_llm.top_k(relation, partition_by, text_sql, query=none, k=none, id_column='id', embedding_column=none,
               candidates=none, window=20, model=none, embedding_model=none, dimensions=none,
               max_tokens=none, rank_column='rank', alias='pg_llm_top_k', on_error=none)

  The `k` rows per `partition_by` value of `relation` (a Relation such as ref('reviews'), or a query
  as text) whose `text_sql` best answers `query`, ranked by the LLM: every column of the relation
  plus `rank_column` (1..k; fewer rows when a partition has fewer). Use it as a model's query:
    select * from {{ pg_llm.top_k(ref('reviews'), 'product_id', 'review_text', 'mentions a broken strap', 3, id_column='review_id') }}
  A tournament (decision 0038): windows of `window` rows in `id_column` order, each window's best k
  advance, a final window orders the best k; about n / (window - k) + 1 requests per partition of n
  rows. Every window is an llm_results key (query + its texts in order), filled through the one
  fill (claims, spend cap, estimate with var pg_llm_estimate, llm_calls, dead letters): a rerun pays
  nothing, a new row re-pays the windows it changes. With `embedding_column` (vector / real[], the
  rows embedded with pg_llm.embed) only the `candidates` (default 3k) rows per partition closest to
  the query's embedding (embedded once, cached) go to the LLM. A failed or invalid window answer:
  the partition has no rows this run (dead letter, retried next run); on_error='fail' fails the model.
-#}
{% macro top_k(relation, partition_by, text_sql, query=none, k=none, id_column='id', embedding_column=none, candidates=none, window=20, model=none, embedding_model=none, dimensions=none, max_tokens=none, rank_column='rank', alias='pg_llm_top_k', on_error=none) -%}
  {{ return(adapter.dispatch('top_k', 'pg_llm')(relation, partition_by, text_sql, query, k, id_column=id_column, embedding_column=embedding_column, candidates=candidates, window=window, model=model, embedding_model=embedding_model, dimensions=dimensions, max_tokens=max_tokens, rank_column=rank_column, alias=alias, on_error=on_error)) }}
{%- endmacro %}

{% macro default__top_k(relation, partition_by, text_sql, query=none, k=none, id_column='id', embedding_column=none, candidates=none, window=20, model=none, embedding_model=none, dimensions=none, max_tokens=none, rank_column='rank', alias='pg_llm_top_k', on_error=none) -%}
  {%- set args = {'partition_by': partition_by, 'text_sql': text_sql, 'query': query, 'k': k, 'id_column': id_column,
                  'embedding_column': embedding_column, 'candidates': candidates, 'window': window, 'model': model,
                  'max_tokens': max_tokens, 'rank_column': rank_column} -%}
  {%- do adapter.llm_top_k(args) -%}  {#- a compile error naming each bad argument, at parse time too -#}
  {%- set distance = none -%}
  {%- if embedding_column -%}
    {%- set query_sql = pg_llm.llm_enrich("select " ~ "'" ~ query | replace("'", "''") ~ "'::text as query_text",
          {'query_embedding': pg_llm.embed('query_text', model=embedding_model, dimensions=dimensions)}) -%}
    {%- if execute -%}
      {%- set distance = pg_llm.vector_distance_sql('pg_llm_src.' ~ adapter.quote(embedding_column), '(select pg_llm_q.query_embedding from (' ~ query_sql ~ '\n) as pg_llm_q)', pg_llm.vector_extension_schema()) -%}
    {%- endif -%}
  {%- endif -%}
  {%- if not execute -%}
    {%- do config(tags=['llm']) -%}
    {{ return('(select null::integer as ' ~ adapter.quote(rank_column) ~ ') as ' ~ alias) }}
  {%- endif -%}
  {%- set source_sql = pg_llm.vector_from_sql(relation) -%}  {#- a query string parenthesized, a Relation as is -#}
  {%- set node = context.get('model') -%}
  {%- set estimate = var('pg_llm_estimate', false) -%}
  {%- set query_out = adapter.llm_top_k(args, source_sql, on_error=on_error, node_id=node.unique_id if node else none, estimate=estimate, distance_sql=distance) -%}
  {%- if estimate and flags.WHICH in ('run', 'build', 'retry') -%}
    {{ exceptions.raise_compiler_error("pg_llm: estimate mode (var pg_llm_estimate): the estimate is logged above; nothing was requested and the model's table was left unchanged. Use `dbt compile --select <models> --vars '{pg_llm_estimate: true}'` to estimate without failing models.") }}
  {%- endif -%}
  {{ return('(' ~ query_out ~ '\n) as ' ~ alias) }}
{%- endmacro %}
