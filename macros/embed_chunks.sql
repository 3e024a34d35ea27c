{#-
  pg_llm.embed_chunks(relation, id_column, text_column, chunk_size=1000, overlap=200, model=none,
                      dimensions=none, unit='characters')

  A model body with one row per chunk of each document of `relation` (a Relation or a query string):
  `<id_column>`, `chunk_index` (0, 1, ...), `chunk_text` and `embedding` (pg_llm.embed of the chunk:
  vector(d) with pgvector, else real[]). Chunks are `chunk_size` characters (unit='characters') or
  whitespace-separated words (unit='words', a cheap stand-in for tokens), each starting
  chunk_size - overlap after the previous one, so neighbours share `overlap` units; a document
  shorter than a chunk is one chunk; NULL, empty or whitespace-only text gives no row.
  Incremental by construction: each chunk's embedding is cached under its text (and the model and
  dimensions), so a rerun requests only the chunks of new or changed documents.
-#}
{% macro embed_chunks(relation, id_column, text_column, chunk_size=1000, overlap=200, model=none, dimensions=none, unit='characters') -%}
  {{ return(adapter.dispatch('embed_chunks', 'pg_llm')(relation, id_column, text_column, chunk_size=chunk_size, overlap=overlap, model=model, dimensions=dimensions, unit=unit)) }}
{%- endmacro %}

{% macro default__embed_chunks(relation, id_column, text_column, chunk_size=1000, overlap=200, model=none, dimensions=none, unit='characters') -%}
  {%- if chunk_size is not number or chunk_size != chunk_size | int or chunk_size < 1 -%}
    {{ exceptions.raise_compiler_error("pg_llm.embed_chunks: chunk_size must be a positive integer (" ~ unit ~ " per chunk), got " ~ chunk_size) }}
  {%- endif -%}
  {%- if overlap is not number or overlap != overlap | int or overlap < 0 or overlap >= chunk_size -%}
    {{ exceptions.raise_compiler_error("pg_llm.embed_chunks: overlap must be an integer from 0 to chunk_size - 1 (" ~ (chunk_size - 1) ~ "), got " ~ overlap) }}
  {%- endif -%}
  {%- if unit not in ('characters', 'words') -%}
    {{ exceptions.raise_compiler_error("pg_llm.embed_chunks: unit must be 'characters' or 'words', got '" ~ unit ~ "'") }}
  {%- endif -%}
  {%- set step = chunk_size - overlap -%}
  {%- set q = adapter.quote -%}
  {%- if unit == 'characters' -%}
    {%- set length_sql = 'char_length(pg_llm_d.pg_llm_text)' -%}
    {%- set chunk_sql = 'substr(pg_llm_d.pg_llm_text, pg_llm_c.chunk_index * ' ~ step ~ ' + 1, ' ~ chunk_size ~ ')' -%}
    {%- set doc_sql = 'select ' ~ q(id_column) ~ ' as pg_llm_id, ' ~ q(text_column) ~ '::text as pg_llm_text' -%}
  {%- else -%}
    {%- set length_sql = 'cardinality(pg_llm_d.pg_llm_text)' -%}
    {%- set chunk_sql = 'array_to_string(pg_llm_d.pg_llm_text[pg_llm_c.chunk_index * ' ~ step ~ ' + 1 : pg_llm_c.chunk_index * ' ~ step ~ ' + ' ~ chunk_size ~ '], \' \')' -%}
    {%- set doc_sql = 'select ' ~ q(id_column) ~ ' as pg_llm_id, regexp_split_to_array(regexp_replace(' ~ q(text_column) ~ '::text, \'^\\s+|\\s+$\', \'\', \'g\'), \'\\s+\') as pg_llm_text' -%}
  {%- endif -%}
  {%- set chunks -%}
select pg_llm_d.pg_llm_id as {{ q(id_column) }}, pg_llm_c.chunk_index, {{ chunk_sql }} as chunk_text
from ({{ doc_sql }} from {{ pg_llm.vector_from_sql(relation) }} as pg_llm_src where {{ q(text_column) }}::text ~ '\S') as pg_llm_d
cross join lateral generate_series(0, greatest(1, ceil(({{ length_sql }} - {{ overlap }})::numeric / {{ step }})::int) - 1) as pg_llm_c(chunk_index)
  {%- endset -%}
  {%- set spec = pg_llm.embed('chunk_text', model=model, dimensions=dimensions) -%}
  {{ return(pg_llm.llm_enrich(chunks, {'embedding': spec})) }}
{%- endmacro %}
