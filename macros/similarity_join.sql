{#-
  pg_llm.similarity_join(left, right, left_embedding, right_embedding, k=5, min_similarity=none,
                         right_prefix='right_', keep_embeddings=false)

  For each row of `left`, its `k` nearest rows of `right` by cosine similarity: every column of
  `left`, every column of `right` renamed `<right_prefix><name>`, `similarity` (cosine, 1 = same
  direction) and `similarity_rank` (1..k). The embedding columns themselves are left out unless
  keep_embeddings=true. `left` / `right`: a Relation (ref(...), source(...)) or a query string.

  A lateral subquery per left row orders `right` by distance with LIMIT k, so with pgvector an HNSW
  index on the right column (pg_llm.vector_index) serves it (approximate, like any HNSW search: raise
  `hnsw.ef_search` in a pre-hook for k > 40 or better recall); without an index, or without pgvector
  (real[] columns), it is an exact scan. min_similarity filters the k found (so the index still serves
  the order). Ties in distance are broken by the right row's other columns, in order: same inputs,
  same rows.
-#}
{% macro similarity_join(left, right, left_embedding, right_embedding, k=5, min_similarity=none, right_prefix='right_', keep_embeddings=false) -%}
  {{ return(adapter.dispatch('similarity_join', 'pg_llm')(left, right, left_embedding, right_embedding, k=k, min_similarity=min_similarity, right_prefix=right_prefix, keep_embeddings=keep_embeddings)) }}
{%- endmacro %}

{% macro default__similarity_join(left, right, left_embedding, right_embedding, k=5, min_similarity=none, right_prefix='right_', keep_embeddings=false) -%}
  {%- if k is not number or k < 1 or k != k | int -%}
    {{ exceptions.raise_compiler_error("pg_llm.similarity_join: k must be a positive integer (the number of right rows per left row), got " ~ k) }}
  {%- endif -%}
  {%- if min_similarity is not none and (min_similarity is not number or min_similarity < -1 or min_similarity > 1) -%}
    {{ exceptions.raise_compiler_error("pg_llm.similarity_join: min_similarity must be a number between -1 and 1 (cosine similarity), got " ~ min_similarity) }}
  {%- endif -%}
  {%- if not execute -%}{{ return('select 1 as pg_llm_parse_placeholder') }}{%- endif -%}
  {%- set left_cols = pg_llm.vector_query_columns(left) -%}
  {%- set right_cols = pg_llm.vector_query_columns(right) -%}
  {%- if left_cols is none or right_cols is none -%}
    {#- compile / docs before the inputs exist: the join's shape, every column of both sides -#}
    {%- set left_cols, right_cols = [left_embedding], [right_embedding] -%}
    {%- set keep_embeddings = true -%}
  {%- endif -%}
  {%- for side, cols, col in [('left', left_cols, left_embedding), ('right', right_cols, right_embedding)] -%}
    {%- if col not in cols -%}
      {{ exceptions.raise_compiler_error("pg_llm.similarity_join: the " ~ side ~ " embedding column '" ~ col ~ "' is not a column of the " ~ side ~ " relation (its columns: " ~ cols | join(', ') ~ "); pass the column name holding the embeddings, e.g. " ~ side ~ "_embedding='embedding'") }}
    {%- endif -%}
  {%- endfor -%}
  {%- set q = adapter.quote -%}
  {%- set vector_schema = pg_llm.vector_extension_schema() -%}
  {%- do pg_llm.warn_hnsw_limit(k, 'similarity_join', vector_schema) -%}
  {%- set distance = pg_llm.vector_distance_sql('pg_llm_r.' ~ q(right_embedding), 'pg_llm_l.' ~ q(left_embedding), vector_schema) -%}
  {%- set right_keys = [] -%}
  {%- for c in right_cols if c != right_embedding -%}{%- do right_keys.append(q(c)) -%}{%- endfor -%}
  {%- set select_cols = [] -%}
  {%- for c in left_cols if keep_embeddings or c != left_embedding -%}
    {%- do select_cols.append('pg_llm_l.' ~ q(c)) -%}
  {%- endfor -%}
  {%- for c in right_cols if keep_embeddings or c != right_embedding -%}
    {%- do select_cols.append('pg_llm_nn.' ~ q(c) ~ ' as ' ~ q(right_prefix ~ c)) -%}
  {%- endfor -%}
select
  {{ (select_cols + ['1 - pg_llm_nn.pg_llm_distance as similarity', 'pg_llm_nn.similarity_rank']) | join(',\n  ') }}
from {{ pg_llm.vector_from_sql(left) }} as pg_llm_l
cross join lateral (
  select pg_llm_k.*, row_number() over (order by pg_llm_k.pg_llm_distance{% for c in right_keys %}, pg_llm_k.{{ c }}{% endfor %}) as similarity_rank
  from (
    select pg_llm_r.*, {{ distance }} as pg_llm_distance
    from {{ pg_llm.vector_from_sql(right) }} as pg_llm_r
    where pg_llm_r.{{ q(right_embedding) }} is not null
    order by {{ distance }}{% for c in right_keys %}, pg_llm_r.{{ c }}{% endfor %}
    limit {{ k | int }}
  ) as pg_llm_k
) as pg_llm_nn
{%- if min_similarity is not none %}
where 1 - pg_llm_nn.pg_llm_distance >= {{ min_similarity }}
{%- endif %}
{%- endmacro %}
