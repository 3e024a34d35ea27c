{#-
  pg_llm.llm_test_column(column_name, test_name) -> the LLM column a generic test is attached to:
  {'node_id', 'key_sql', 'kind', 'audit', 'fresh'} (none at parse time, when nothing is rendered for real).
  llm_enrich records each column's spec in the model's meta (`pg_llm:<column>`); the key is re-derived
  from it with this invocation's settings, exactly as the model's join renders it, and evaluated over
  the model's own rows (llm_enrich keeps every source column, which the prompt SQL reads).
-#}
{% macro llm_test_column(column_name, test_name) -%}
  {{ return(adapter.dispatch('llm_test_column', 'pg_llm')(column_name, test_name)) }}
{%- endmacro %}

{% macro default__llm_test_column(column_name, test_name) -%}
  {%- if not execute -%}{{ return(none) }}{%- endif -%}
  {%- set test_node = context.get('model') -%}
  {%- set target_id = test_node.get('attached_node') if test_node is mapping else none -%}
  {%- if not target_id and test_node is mapping -%}
    {%- for dep in test_node.get('depends_on', {}).get('nodes', []) if dep.startswith('model.') or dep.startswith('snapshot.') -%}
      {%- if loop.first -%}{%- set target_id = dep -%}{%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- set node = graph.nodes.get(target_id) if target_id else none -%}
  {%- set meta = (node.get('config', {}).get('meta', {}) if node else {}) or {} -%}
  {%- set entry = meta.get('pg_llm:' ~ column_name) -%}
  {%- if entry is none -%}
    {%- set known = [] -%}
    {%- for k in meta.keys() if k.startswith('pg_llm:') -%}{%- do known.append(k[7:]) -%}{%- endfor -%}
    {{ exceptions.raise_compiler_error("pg_llm." ~ test_name ~ ": column '" ~ column_name ~ "' of " ~ (target_id or 'the tested node')
       ~ " is not an LLM column made by pg_llm.llm_enrich (its meta has no 'pg_llm:" ~ column_name ~ "'; LLM columns of this model: "
       ~ (known | join(', ') if known else 'none') ~ "). Put the test on a column of llm_enrich's `columns` mapping in a SQL model.") }}
  {%- endif -%}
  {%- if entry.spec is mapping and entry.spec.get('kind') == 'embed' -%}
    {{ exceptions.raise_compiler_error("pg_llm." ~ test_name ~ ": column '" ~ column_name ~ "' of " ~ target_id ~ " is an embedding (pg_llm.embed); the LLM column tests check complete / classify / extract columns") }}
  {%- endif -%}
  {%- set col = adapter.llm_column(entry.spec, default_model=entry.default_model, name=column_name, mode=entry.mode) -%}
  {{ return({'node_id': target_id, 'key_sql': col.key_sql, 'kind': col.spec.kind, 'model': col.model,
             'audit': adapter.quote(adapter.llm_audit_schema()), 'audit_name': adapter.llm_audit_schema(),
             'fresh': adapter.llm_fresh_sql('__llm_r')}) }}
{%- endmacro %}
