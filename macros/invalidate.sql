{#-
  pg_llm.invalidate(model=none, node=none, column=none, key=none, older_than_days=none, where=none, all=false)

  `dbt run-operation pg_llm.invalidate --args '{model: sim, column: sentiment}'` marks the matching
  cached answers invalid in llm_audit.llm_results (kept for the audit) AND in the local journal, and
  records the invalidation in llm_audit.llm_invalidations, which every fill checks its journal
  against (journals on other machines included), so the next run anywhere requests exactly those
  keys again. `where` is trusted SQL over llm_results columns.
  With no filter at all it refuses, unless all: true. Commits (on the adapter's own connection).
-#}
{% macro invalidate(model=none, node=none, column=none, key=none, older_than_days=none, where=none, all=false) -%}
  {{ return(adapter.dispatch('invalidate', 'pg_llm')(model=model, node=node, column=column, key=key, older_than_days=older_than_days, where=where, all=all)) }}
{%- endmacro %}

{% macro default__invalidate(model=none, node=none, column=none, key=none, older_than_days=none, where=none, all=false) -%}
  {%- set done = adapter.llm_invalidate({'model': model, 'node': node, 'column': column, 'key': key, 'older_than_days': older_than_days, 'where': where, 'all': all}) -%}
  {{ return(done) }}
{%- endmacro %}
