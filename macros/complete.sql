{#- pg_llm.complete(prompt_sql, ...) -> column spec: free-text answer to the prompt each row's SQL expression builds. -#}
{% macro complete(prompt_sql, system=none, model=none, max_tokens=none, temperature=none, mode=none, batch_size=none) -%}
  {{ return(adapter.dispatch('complete', 'pg_llm')(prompt_sql, system=system, model=model, max_tokens=max_tokens, temperature=temperature, mode=mode, batch_size=batch_size)) }}
{%- endmacro %}

{% macro default__complete(prompt_sql, system=none, model=none, max_tokens=none, temperature=none, mode=none, batch_size=none) -%}
  {%- set spec = {'kind': 'complete', 'prompt_sql': prompt_sql} -%}
  {%- for key, value in [('system', system), ('model', model), ('max_tokens', max_tokens), ('temperature', temperature), ('mode', mode), ('batch_size', batch_size)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
