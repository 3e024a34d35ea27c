{#-
  dbt run-operation pg_llm.evaluate --args '{node: reviews_enriched, column: sentiment, golden: golden_sentiment}'
      optional: key (default id: the column matching the model's rows to the golden rows),
                golden_column (default: column), models (default: the column's own model), e.g. [small, large, smart]

  Asks each model for the golden rows' prompts (cached and audited like any call), compares with the
  golden values and writes accuracy, cost per row, latency and accuracy by confidence decile per model
  into <audit schema>.llm_evaluations (shown by the HTML report; a route with `scores: from_evaluations`
  uses them).
-#}
{% macro evaluate(node, column, golden, key='id', golden_column=none, models=none) -%}
  {{ return(adapter.dispatch('evaluate', 'pg_llm')(node, column, golden, key=key, golden_column=golden_column, models=models)) }}
{%- endmacro %}

{% macro default__evaluate(node, column, golden, key='id', golden_column=none, models=none) -%}
  {%- set found = [] -%}
  {%- for n in graph.nodes.values() -%}
    {%- if n.resource_type == 'model' and n.name == node -%}{%- do found.append(n) -%}{%- endif -%}
  {%- endfor -%}
  {%- if not found -%}
    {{ exceptions.raise_compiler_error("pg_llm.evaluate: no model named '" ~ node ~ "'; pass node: <the name of a model that uses pg_llm.llm_enrich>") }}
  {%- endif -%}
  {%- set meta = found[0].config.meta.get('pg_llm:' ~ column) -%}
  {%- if not meta -%}
    {{ exceptions.raise_compiler_error("pg_llm.evaluate: '" ~ column ~ "' is not an LLM column of model '" ~ node ~ "'; pass column: <a column named in its llm_enrich>") }}
  {%- endif -%}
  {%- set text = adapter.llm_evaluate(found[0].unique_id, column, meta, ref(node) | string, ref(golden) | string, golden, key, golden_column or column, models) -%}
  {%- do log(text, info=true) -%}
  {{ return(text) }}
{%- endmacro %}
