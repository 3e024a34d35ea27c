{#- pg_llm.classify(text_sql, labels=[...], ...) -> column spec: exactly one of `labels` per row (anything else is an error, never a value). -#}
{% macro classify(text_sql, labels=[], instructions=none, model=none, mode=none, batch_size=none) -%}
  {{ return(adapter.dispatch('classify', 'pg_llm')(text_sql, labels=labels, instructions=instructions, model=model, mode=mode, batch_size=batch_size)) }}
{%- endmacro %}

{% macro default__classify(text_sql, labels=[], instructions=none, model=none, mode=none, batch_size=none) -%}
  {%- if labels is string or labels | length == 0 -%}
    {{ exceptions.raise_compiler_error("pg_llm.classify: `labels` must be a non-empty list, e.g. labels=['positive', 'negative', 'neutral']") }}
  {%- endif -%}
  {%- set spec = {'kind': 'classify', 'prompt_sql': text_sql, 'labels': labels | list} -%}
  {%- for key, value in [('instructions', instructions), ('model', model), ('mode', mode), ('batch_size', batch_size)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
