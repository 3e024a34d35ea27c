{#-
  Helpers of the vector macros (similarity, similarity_join, semantic_search, vector_index):
  where pgvector lives, the columns of a relation or query, and the distance / similarity SQL for
  vector and real[] alike. All of them answer only at execution time (parse renders placeholders).
-#}

{#- The schema of the `vector` extension in the target database, or none (not installed, or parse time). -#}
{% macro vector_extension_schema() -%}
  {{ return(adapter.dispatch('vector_extension_schema', 'pg_llm')()) }}
{%- endmacro %}

{% macro default__vector_extension_schema() -%}
  {%- if not execute -%}{{ return(none) }}{%- endif -%}
  {%- set found = run_query("select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'") -%}
  {{ return(found.rows[0][0] if found.rows | length > 0 else none) }}
{%- endmacro %}

{#- `relation` as a FROM item: a Relation as is, a query string parenthesized. -#}
{% macro vector_from_sql(relation) -%}
  {{ return(adapter.dispatch('vector_from_sql', 'pg_llm')(relation)) }}
{%- endmacro %}

{% macro default__vector_from_sql(relation) -%}
  {{ return('(' ~ (relation | trim) ~ '\n)' if relation is string else relation | string) }}
{%- endmacro %}

{#- The column names of a relation or query (a `limit 0` query; [] at parse time; none for a
    Relation that does not exist yet, e.g. `dbt compile` before the upstream models were built). -#}
{% macro vector_query_columns(relation) -%}
  {{ return(adapter.dispatch('vector_query_columns', 'pg_llm')(relation)) }}
{%- endmacro %}

{% macro default__vector_query_columns(relation) -%}
  {%- if not execute -%}{{ return([]) }}{%- endif -%}
  {%- if relation is not string and load_relation(relation) is none -%}{{ return(none) }}{%- endif -%}
  {{ return(run_query('select * from ' ~ pg_llm.vector_from_sql(relation) ~ ' as pg_llm_q limit 0').column_names | list) }}
{%- endmacro %}

{#- Cosine distance (0 = same direction, 2 = opposite) of two embedding expressions.
    With pgvector: its `<=>` on both sides cast to vector (a no-op for vector columns, so an HNSW
    index on the column still serves ORDER BY distance). Without it: 1 - similarity over real[]. -#}
{% macro vector_distance_sql(a, b, vector_schema) -%}
  {{ return(adapter.dispatch('vector_distance_sql', 'pg_llm')(a, b, vector_schema)) }}
{%- endmacro %}

{% macro default__vector_distance_sql(a, b, vector_schema) -%}
  {%- if vector_schema -%}
    {%- set ns = adapter.quote(vector_schema) -%}
    {{ return('((' ~ a ~ ')::' ~ ns ~ '.vector operator(' ~ ns ~ '.<=>) (' ~ b ~ ')::' ~ ns ~ '.vector)') }}
  {%- else -%}
    {{ return('(1 - ' ~ pg_llm.real_array_cosine_sql(a, b) ~ ')') }}
  {%- endif -%}
{%- endmacro %}

{#- Cosine similarity of two real[] (or anything castable to real[]) in plain SQL: no extension, no
    function to install. Different lengths fail the statement with a message saying so (a cast of a
    non-constant text, so the planner cannot fold it); a NULL side or a zero vector gives NULL. -#}
{% macro real_array_cosine_sql(a, b) -%}
  {{ return(adapter.dispatch('real_array_cosine_sql', 'pg_llm')(a, b)) }}
{%- endmacro %}

{% macro default__real_array_cosine_sql(a, b) -%}
  {%- set x = '(' ~ a ~ ')::real[]' -%}
  {%- set y = '(' ~ b ~ ')::real[]' -%}
  {{ return("(case when cardinality(" ~ x ~ ") <> cardinality(" ~ y ~ ") then ('pg_llm.similarity: the two embeddings have different dimensions (' || cardinality(" ~ x ~ ") || ' vs ' || cardinality(" ~ y ~ ") || '); embed both sides with the same model and dimensions')::int::float8"
            ~ " else (select sum(pg_llm_x::float8 * pg_llm_y) / nullif(sqrt(sum(pg_llm_x::float8 * pg_llm_x)) * sqrt(sum(pg_llm_y::float8 * pg_llm_y)), 0)"
            ~ " from unnest(" ~ x ~ ", " ~ y ~ ") as pg_llm_t(pg_llm_x, pg_llm_y)) end)") }}
{%- endmacro %}

{#- An HNSW index scan yields at most hnsw.ef_search rows (pgvector's default 40): a larger k would be
    cut silently, so say which pre-hook raises it (a SET from here would outlive the model on dbt's
    reused connection). Only with pgvector; an exact scan is not affected. -#}
{% macro warn_hnsw_limit(k, caller_name, vector_schema) -%}
  {{ return(adapter.dispatch('warn_hnsw_limit', 'pg_llm')(k, caller_name, vector_schema)) }}
{%- endmacro %}

{% macro default__warn_hnsw_limit(k, caller_name, vector_schema) -%}
  {%- if vector_schema and k > 40 -%}
    {%- do exceptions.warn("pg_llm." ~ caller_name ~ ": k=" ~ k ~ " is above pgvector's default hnsw.ef_search (40); an HNSW index scan returns at most ef_search rows, so add pre_hook=\"set hnsw.ef_search = " ~ k ~ "\" to the model's config (an exact scan is not affected)") -%}
  {%- endif -%}
{%- endmacro %}
