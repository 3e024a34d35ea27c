{#- pg_llm.filter(text_sql, question, ...) -> column spec: a boolean per row (true / false; NULL when the
    answer failed), plus `<name>__confidence` (the answer's logprob confidence, double precision).
    Keyed like classify (one request per distinct text; the question is in the key). -#}
{% macro filter(text_sql, question, instructions=none, model=none, mode=none, batch_size=none) -%}
  {{ return(adapter.dispatch('filter', 'pg_llm')(text_sql, question, instructions=instructions, model=model, mode=mode, batch_size=batch_size)) }}
{%- endmacro %}

{% macro default__filter(text_sql, question, instructions=none, model=none, mode=none, batch_size=none) -%}
  {%- if question is not string or question | trim == '' -%}
    {{ exceptions.raise_compiler_error("pg_llm.filter: `question` must be non-empty text, the condition asked of each text, e.g. question='Does the review mention shipping?'") }}
  {%- endif -%}
  {%- if text_sql is not string or text_sql | trim == '' -%}
    {{ exceptions.raise_compiler_error("pg_llm.filter: `text_sql` must be the SQL expression of the text, e.g. 'review_text'") }}
  {%- endif -%}
  {%- set spec = {'kind': 'filter', 'prompt_sql': text_sql, 'question': question} -%}
  {%- for key, value in [('instructions', instructions), ('model', model), ('mode', mode), ('batch_size', batch_size)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
