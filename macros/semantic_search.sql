{#-
  pg_llm.semantic_search(relation, embedding_column, query_text, k=10, model=none, dimensions=none)

  The `k` rows of `relation` (a Relation or a query string) whose `embedding_column` is closest to
  the embedding of `query_text` (a text, embedded once through pg_llm.embed: cached like any input,
  so a rerun or another search for the same text requests nothing), with `similarity` (cosine) and
  `similarity_rank` (1..k); the embedding column itself is left out. Embed the query with the same
  model and dimensions as the rows. The query's vector is a scalar subquery, so with pgvector an
  HNSW index on the column (pg_llm.vector_index) serves the ORDER BY; ties by the other columns.
-#}
{% macro semantic_search(relation, embedding_column, query_text, k=10, model=none, dimensions=none) -%}
  {{ return(adapter.dispatch('semantic_search', 'pg_llm')(relation, embedding_column, query_text, k=k, model=model, dimensions=dimensions)) }}
{%- endmacro %}

{% macro default__semantic_search(relation, embedding_column, query_text, k=10, model=none, dimensions=none) -%}
  {%- if query_text is not string or query_text | trim == '' -%}
    {{ exceptions.raise_compiler_error("pg_llm.semantic_search: query_text must be a non-empty text (what to search for), got " ~ query_text) }}
  {%- endif -%}
  {%- if k is not number or k < 1 or k != k | int -%}
    {{ exceptions.raise_compiler_error("pg_llm.semantic_search: k must be a positive integer (how many rows to return), got " ~ k) }}
  {%- endif -%}
  {%- set query_sql = pg_llm.llm_enrich("select " ~ "'" ~ query_text | replace("'", "''") ~ "'::text as query_text",
        {'query_embedding': pg_llm.embed('query_text', model=model, dimensions=dimensions)}) -%}
  {%- if not execute -%}{{ return(query_sql) }}{%- endif -%}
  {%- set cols = pg_llm.vector_query_columns(relation) -%}
  {%- if cols is none -%}{%- set cols = [embedding_column] -%}{%- endif -%}  {#- compile before the relation exists -#}
  {%- if embedding_column not in cols -%}
    {{ exceptions.raise_compiler_error("pg_llm.semantic_search: '" ~ embedding_column ~ "' is not a column of the relation (its columns: " ~ cols | join(', ') ~ "); pass the column holding the embeddings") }}
  {%- endif -%}
  {%- set q = adapter.quote -%}
  {%- set keys = [] -%}
  {%- for c in cols if c != embedding_column -%}{%- do keys.append(q(c)) -%}{%- endfor -%}
  {%- set vector_schema = pg_llm.vector_extension_schema() -%}
  {%- do pg_llm.warn_hnsw_limit(k, 'semantic_search', vector_schema) -%}
  {%- set distance = pg_llm.vector_distance_sql('pg_llm_r.' ~ q(embedding_column), '(select pg_llm_q.query_embedding from (' ~ query_sql ~ '\n) as pg_llm_q)', vector_schema) -%}
select {% for c in keys %}pg_llm_k.{{ c }}, {% endfor %}1 - pg_llm_k.pg_llm_distance as similarity,
  row_number() over (order by pg_llm_k.pg_llm_distance{% for c in keys %}, pg_llm_k.{{ c }}{% endfor %}) as similarity_rank
from (
  select pg_llm_r.*, {{ distance }} as pg_llm_distance
  from {{ pg_llm.vector_from_sql(relation) }} as pg_llm_r
  where pg_llm_r.{{ q(embedding_column) }} is not null
  order by {{ distance }}{% for c in keys %}, pg_llm_r.{{ c }}{% endfor %}
  limit {{ k | int }}
) as pg_llm_k
{%- endmacro %}
