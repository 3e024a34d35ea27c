{#- pg_llm.extract(text_sql, schema={...}, ...) -> column spec: a jsonb value valid for the JSON schema; max_tokens bounds the answer (and the estimate, the cap's reservation). -#}
{% macro extract(text_sql, schema={}, instructions=none, model=none, max_tokens=none, mode=none, batch_size=none) -%}
  {{ return(adapter.dispatch('extract', 'pg_llm')(text_sql, schema=schema, instructions=instructions, model=model, max_tokens=max_tokens, mode=mode, batch_size=batch_size)) }}
{%- endmacro %}

{% macro default__extract(text_sql, schema={}, instructions=none, model=none, max_tokens=none, mode=none, batch_size=none) -%}
  {%- if schema is not mapping -%}
    {{ exceptions.raise_compiler_error("pg_llm.extract: `schema` must be a JSON schema mapping, e.g. schema={'type': 'object', 'properties': {'product': {'type': 'string'}}}") }}
  {%- endif -%}
  {%- set spec = {'kind': 'extract', 'prompt_sql': text_sql, 'schema': schema if schema else {'type': 'object'}} -%}
  {%- for key, value in [('instructions', instructions), ('model', model), ('max_tokens', max_tokens), ('mode', mode), ('batch_size', batch_size)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
