{#-
  pg_llm.llm_accuracy(golden, key_column, golden_column=<column>, golden_key_column=<key_column>,
                      min_accuracy=1, comparison='exact', judge_model=none):
  agreement of the LLM column with a golden relation (e.g. ref('golden_sentiment'), a seed), matched
  on `key_column`, is at least `min_accuracy` (0..1). Every golden row counts: one the model lacks, or
  whose answer is NULL, disagrees. Labels and text: `comparison` 'exact' (equal text), 'normalized'
  (lower case, punctuation and runs of spaces ignored) or 'judge': pairs that differ after
  normalising are asked of `judge_model` as a classify ('same' / 'different') through the same
  engine, cache and llm_calls audit as any column (paid once per distinct pair; `dbt test` and
  `dbt build` request them, compile does not). extract (JSON) columns: per field: each top-level
  field of the golden object is one comparison, and the accuracy is the share of fields that match.
  When the accuracy is below the minimum the test returns the disagreeing golden rows.
-#}
{% test llm_accuracy(model, column_name, golden, key_column, golden_column=none, golden_key_column=none,
                     min_accuracy=1, comparison='exact', judge_model=none) %}
  {{ return(adapter.dispatch('test_llm_accuracy', 'pg_llm')(model, column_name, golden, key_column, golden_column,
                                                            golden_key_column, min_accuracy, comparison, judge_model)) }}
{% endtest %}

{% macro default__test_llm_accuracy(model, column_name, golden, key_column, golden_column=none, golden_key_column=none,
                                    min_accuracy=1, comparison='exact', judge_model=none) %}
  {%- set col = pg_llm.llm_test_column(column_name, 'llm_accuracy') -%}
  {%- if col is none -%}
    select null::text as golden_key where false
  {%- else -%}
  {%- set where = "pg_llm.llm_accuracy of column '" ~ column_name ~ "': " -%}
  {%- if comparison not in ('exact', 'normalized', 'judge') -%}
    {{ exceptions.raise_compiler_error(where ~ "comparison must be 'exact', 'normalized' or 'judge', got '" ~ comparison ~ "'") }}
  {%- endif -%}
  {%- if comparison == 'judge' and not judge_model -%}
    {{ exceptions.raise_compiler_error(where ~ "comparison 'judge' needs judge_model: a model name from the profile's llm.models") }}
  {%- endif -%}
  {%- if min_accuracy is not number or min_accuracy < 0 or min_accuracy > 1 -%}
    {{ exceptions.raise_compiler_error(where ~ "min_accuracy must be a number from 0 to 1, got " ~ min_accuracy) }}
  {%- endif -%}
  {%- if not key_column -%}
    {{ exceptions.raise_compiler_error(where ~ "key_column names the column that matches model rows to golden rows, e.g. key_column: review_id") }}
  {%- endif -%}
  {%- set gcol = adapter.quote(golden_column or column_name) -%}
  {%- set mkey = adapter.quote(key_column) -%}
  {%- set gkey = adapter.quote(golden_key_column or key_column) -%}
  {%- set value = adapter.quote(column_name) -%}
  {%- set pairs -%}
    select g.{{ gkey }}::text as golden_key, m.{{ value }} as llm_value, g.{{ gcol }} as golden_value
    from (select * from {{ golden }}) g left join (select * from {{ model }}) m on m.{{ mkey }}::text = g.{{ gkey }}::text
  {%- endset -%}
  {%- if col.kind == 'extract' -%}
with __llm_pairs as ({{ pairs }}),
__llm_fields as (
    select p.golden_key, f.key as field, f.value as golden_field, p.llm_value::jsonb -> f.key as llm_field
    from __llm_pairs p cross join lateral jsonb_each(p.golden_value::jsonb) f
),
__llm_scored as (
    select golden_key, field, golden_field, llm_field,
           {% if comparison == 'exact' -%} llm_field is not distinct from golden_field
           {%- else -%} llm_field is not null and {{ pg_llm.llm_normalized_sql('llm_field') }} = {{ pg_llm.llm_normalized_sql('golden_field') }} {%- endif %} as agrees
    from __llm_fields
),
__llm_totals as (
    select count(*) as compared, count(*) filter (where agrees) as agreeing from __llm_scored
)
select s.golden_key, jsonb_object_agg(s.field, jsonb_build_object('llm', s.llm_field, 'golden', s.golden_field)) as disagreeing_fields,
       max(t.agreeing) as agreeing_fields, max(t.compared) as compared_fields,
       round(max(t.agreeing)::numeric / nullif(max(t.compared), 0), 4) as accuracy
from __llm_scored s cross join __llm_totals t
where not s.agrees and t.agreeing < {{ min_accuracy }} * t.compared
group by s.golden_key
  {%- else -%}
  {%- set same = "p.llm_value::text = p.golden_value::text" if comparison == 'exact'
                 else pg_llm.llm_normalized_sql('p.llm_value') ~ ' = ' ~ pg_llm.llm_normalized_sql('p.golden_value') -%}
  {%- if comparison == 'judge' -%}
    {#- the pairs normalising does not settle, asked of the judge once per distinct pair (cached, audited) -#}
    {%- set open_pairs = "(select distinct p.llm_value::text as llm_answer, p.golden_value::text as golden_answer from ("
                         ~ pairs ~ ") p where p.llm_value is not null and p.golden_value is not null and not ("
                         ~ pg_llm.llm_normalized_sql('p.llm_value') ~ ' = ' ~ pg_llm.llm_normalized_sql('p.golden_value') ~ ")\n)" -%}
    {%- set judge_spec = pg_llm.classify("'Reference answer:' || E'\\n' || golden_answer || E'\\n\\nCandidate answer:' || E'\\n' || llm_answer",
          labels=['same', 'different'], model=judge_model,
          instructions="Does the candidate answer say the same thing as the reference answer? Judge the meaning, not the wording: 'same' or 'different'.") -%}
    {%- set judge = adapter.llm_column(judge_spec, name='llm_judge_verdict') -%}
    {%- set test_id = context.get('model').get('unique_id') -%}
    {%- do adapter.llm_prepare() -%}
    {%- do adapter.llm_fill(open_pairs, [judge], on_error='null', node_id=test_id, for_test=true) -%}
    {%- set judged = adapter.llm_join_sql(open_pairs, [judge], on_error='null') -%}
with __llm_pairs as ({{ pairs }}),
__llm_judged as ({{ judged }}),
__llm_scored as (
    select p.golden_key, p.llm_value::text as llm_value, p.golden_value::text as golden_value,
           coalesce({{ same }}, false) or coalesce(j.llm_judge_verdict = 'same', false) as agrees,
           j.llm_judge_verdict as judge_verdict
    from __llm_pairs p
    left join __llm_judged j on j.llm_answer = p.llm_value::text and j.golden_answer = p.golden_value::text
),
  {%- else %}
with __llm_pairs as ({{ pairs }}),
__llm_scored as (
    select p.golden_key, p.llm_value::text as llm_value, p.golden_value::text as golden_value,
           coalesce({{ same }}, false) as agrees, null::text as judge_verdict
    from __llm_pairs p
),
  {%- endif %}
__llm_totals as (
    select count(*) as compared, count(*) filter (where agrees) as agreeing from __llm_scored
)
select s.golden_key, s.llm_value, s.golden_value, s.judge_verdict, t.agreeing as agreeing_rows, t.compared as golden_rows,
       round(t.agreeing::numeric / nullif(t.compared, 0), 4) as accuracy
from __llm_scored s cross join __llm_totals t
where not s.agrees and t.agreeing < {{ min_accuracy }} * t.compared
  {%- endif -%}
  {%- endif -%}
{% endmacro %}
