{#-
  create_table_as for pg_llm: SQL goes to dbt-postgres; Python models get the compiled code plus a
  trailer naming the target, and run in-process through adapter.submit_python_job (python_model.py),
  which writes the returned DataFrame with CREATE TABLE + COPY on the model's connection.
-#}
{% macro pg_llm__create_table_as(temporary, relation, compiled_code, language='sql') -%}
  {%- if language == 'sql' -%}
    {{ postgres__create_table_as(temporary, relation, compiled_code) }}
  {%- elif language == 'python' -%}
    {{ pg_llm__py_write_table(temporary=temporary, relation=relation, compiled_code=compiled_code) }}
  {%- else -%}
    {% do exceptions.raise_compiler_error("pg_llm__create_table_as: unsupported language " ~ language) %}
  {%- endif -%}
{%- endmacro %}

{% macro pg_llm__py_write_table(temporary, relation, compiled_code) -%}
{{ compiled_code }}

# -- pg_llm: where the DataFrame returned by model() is written (CREATE TABLE + COPY) --
__pg_llm_target__ = {{ relation.render() | tojson }}
__pg_llm_temporary__ = {{ 'True' if temporary else 'False' }}
{%- endmacro %}
