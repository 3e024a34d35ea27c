{#-
  pg_llm.vector_index(column, method='hnsw', metric='cosine', relation=none) -> a statement for a
  post-hook: `{{ config(post_hook="{{ pg_llm.vector_index('embedding') }}") }}`.
  With pgvector and a vector(d) column: `create index ... using hnsw (column vector_cosine_ops)` on
  the model's table (`relation`, default `this`), unless an index of that method and operator class
  already covers the column (an incremental model keeps its index; a rebuilt table gets a new one,
  named uniquely because the replaced table's index still exists while the hook runs).
  Without pgvector, or for a real[] column: nothing (an empty hook), and a log line saying why.
  method: 'hnsw' or 'ivfflat'; metric: 'cosine' (what pg_llm.similarity_join orders by), 'l2' or
  'inner_product'.
-#}
{% macro vector_index(column, method='hnsw', metric='cosine', relation=none) -%}
  {{ return(adapter.dispatch('vector_index', 'pg_llm')(column, method=method, metric=metric, relation=relation)) }}
{%- endmacro %}

{% macro default__vector_index(column, method='hnsw', metric='cosine', relation=none) -%}
  {%- set opclasses = {'cosine': 'vector_cosine_ops', 'l2': 'vector_l2_ops', 'inner_product': 'vector_ip_ops'} -%}
  {%- if method not in ('hnsw', 'ivfflat') -%}
    {{ exceptions.raise_compiler_error("pg_llm.vector_index: method must be 'hnsw' or 'ivfflat', got '" ~ method ~ "'") }}
  {%- endif -%}
  {%- if metric not in opclasses -%}
    {{ exceptions.raise_compiler_error("pg_llm.vector_index: metric must be one of " ~ opclasses.keys() | list | join(', ') ~ " (pg_llm.similarity_join uses cosine), got '" ~ metric ~ "'") }}
  {%- endif -%}
  {%- if not execute -%}{{ return('') }}{%- endif -%}
  {%- set rel = relation if relation is not none else this -%}
  {%- set vector_schema = pg_llm.vector_extension_schema() -%}
  {%- if not vector_schema -%}
    {%- do log("pg_llm.vector_index: the vector extension is not installed in this database, so " ~ rel ~ "." ~ column ~ " gets no " ~ method ~ " index (similarity joins on it scan exactly); `create extension vector` to index it", info=true) -%}
    {{ return('') }}
  {%- endif -%}
  {%- set found = run_query("select format_type(a.atttypid, a.atttypmod), exists (select 1 from pg_index i join pg_class ic on ic.oid = i.indexrelid join pg_am am on am.oid = ic.relam join pg_opclass oc on oc.oid = i.indclass[0] where i.indrelid = a.attrelid and i.indkey[0] = a.attnum and am.amname = " ~ dbt.string_literal(method) ~ " and oc.opcname = " ~ dbt.string_literal(opclasses[metric]) ~ ") from pg_attribute a where a.attrelid = " ~ dbt.string_literal(rel | string) ~ "::regclass and a.attname = " ~ dbt.string_literal(column) ~ " and not a.attisdropped") -%}
  {%- if found.rows | length == 0 -%}
    {{ exceptions.raise_compiler_error("pg_llm.vector_index: " ~ rel ~ " has no column '" ~ column ~ "'; pass the name of its embedding column") }}
  {%- endif -%}
  {%- set column_type, indexed = found.rows[0][0], found.rows[0][1] -%}
  {%- if not column_type.startswith('vector') -%}
    {%- do log("pg_llm.vector_index: " ~ rel ~ "." ~ column ~ " is " ~ column_type ~ ", not vector(d): no index (store it as vector(d) to index it)", info=true) -%}
    {{ return('') }}
  {%- endif -%}
  {%- if indexed -%}{{ return('') }}{%- endif -%}
  {%- set name = (rel.identifier[:30] ~ '_' ~ column[:12] ~ '_' ~ method ~ '_' ~ local_md5(rel ~ column ~ metric ~ invocation_id)[:8]) -%}
  {{ return('create index ' ~ adapter.quote(name) ~ ' on ' ~ rel ~ ' using ' ~ method ~ ' (' ~ adapter.quote(column) ~ ' ' ~ adapter.quote(vector_schema) ~ '.' ~ opclasses[metric] ~ ')') }}
{%- endmacro %}
