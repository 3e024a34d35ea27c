{#- pg_llm.embed(text_sql, model=none, dimensions=none) -> column spec for llm_enrich: the embedding of each row's text
    (vector(d) where the target database has the pgvector extension, else real[]; NULL for a NULL text).
    Each distinct text is paid for once (cached in the audit schema's llm_embeddings). `model` names an embedding
    model entry of the profile (provider openai / azure or an OpenAI-compatible server); `dimensions` where the
    model supports it (text-embedding-3-*). `mode`: 'batch' sends the missing texts through the provider's batch API
    (half price; collected by a later run, the rows stay NULL until then), 'normal' never; none: the model's `batch:`. -#}
{% macro embed(text_sql, model=none, dimensions=none, mode=none) -%}
  {{ return(adapter.dispatch('embed', 'pg_llm')(text_sql, model=model, dimensions=dimensions, mode=mode)) }}
{%- endmacro %}

{% macro default__embed(text_sql, model=none, dimensions=none, mode=none) -%}
  {%- set spec = {'kind': 'embed', 'prompt_sql': text_sql} -%}
  {%- for key, value in [('model', model), ('dimensions', dimensions), ('mode', mode)] -%}
    {%- if value is not none -%}{%- do spec.update({key: value}) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(spec) }}
{%- endmacro %}
