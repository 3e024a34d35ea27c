{#- pg_llm.classify(text_sql, labels=[...], ...) -> column spec: exactly one of `labels` per row (anything else is an error, never a value).
    multi_label=true: a text[] of every label that applies, in the order of `labels` ({} when none does). -#}
{% macro classify(text_sql, labels=[], instructions=none, model=none, mode=none, batch_size=none, multi_label=false) -%}
  {{ return(adapter.dispatch('classify', 'pg_llm')(text_sql, labels=labels, instructions=instructions, model=model, mode=mode, batch_size=batch_size, multi_label=multi_label)) }}
{%- endmacro %}

{% macro default__classify(text_sql, labels=[], instructions=none, model=none, mode=none, batch_size=none, multi_label=false) -%}
  {%- if multi_label is not boolean -%}
    {{ exceptions.raise_compiler_error("pg_llm.classify: `multi_label` must be true or false (true: a text[] of every label that applies), got " ~ multi_label) }}
  {%- endif -%}
  {%- if labels is string or labels is mapping or labels is not iterable or labels | length == 0 -%}
    {{ exceptions.raise_compiler_error("pg_llm.classify: `labels` must be a non-empty list, e.g. labels=['positive', 'negative', 'neutral']") }}
  {%- endif -%}
  {%- set spec = {'kind': 'classify', 'prompt_sql': text_sql, 'labels': labels | list} -%}
  {%- if multi_label -%}{%- do spec.update({'multi_label': true}) -%}{%- endif -%}
  {%- for key, value in [('instructions', instructions), ('model', model), ('mode', mode), ('batch_size', batch_size)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
