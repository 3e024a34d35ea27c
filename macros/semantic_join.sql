{#-
  pg_llm.semantic_join(left, right, left_text, right_text, predicate, left_id=none, right_id=none,
                       left_embedding=none, right_embedding=none, plan='auto', candidates=none,
                       min_similarity=none, model=none, max_labels=100, max_label_tokens=4000,
                       right_prefix='right_', on_error=none)

  The pairs of rows of `left` and `right` (Relations or query strings) for which the LLM says
  `predicate` holds: every column of `left`, every column of `right` renamed `<right_prefix><name>`
  (embedding columns left out). `left_text` / `right_text` / `left_id` / `right_id` / the embedding
  arguments are column names. Plans (decision 0039; the dbt log says each plan's calls and the one chosen):
  - nested: one pg_llm.filter call per distinct (left text, right text) pair: N x M calls;
  - blocked (with both embedding columns): the same calls over candidate pairs only, each left row's
    `candidates` nearest right rows and/or those with cosine similarity >= `min_similarity`;
  - classify: one multi-label pg_llm.classify per distinct left text, whose labels are the right
    side's distinct (blank-trimmed) texts: N calls; only while they fit (<= max_labels texts and
    <= max_label_tokens tokens). Answers map back to EVERY right row with that text.
  plan='auto' takes the fewest calls (then tokens). Everything is filled by pg_llm.llm_enrich: cached
  per key, claims, spend cap, estimate (var pg_llm_estimate), llm_calls, dead letters. A failed call
  gives no pair (its keys are dead letters, retried next run); on_error='fail' fails the model.
-#}
{% macro semantic_join(left, right, left_text, right_text, predicate, left_id=none, right_id=none, left_embedding=none, right_embedding=none, plan='auto', candidates=none, min_similarity=none, model=none, max_labels=100, max_label_tokens=4000, right_prefix='right_', on_error=none) -%}
  {{ return(adapter.dispatch('semantic_join', 'pg_llm')(left, right, left_text, right_text, predicate, left_id=left_id, right_id=right_id, left_embedding=left_embedding, right_embedding=right_embedding, plan=plan, candidates=candidates, min_similarity=min_similarity, model=model, max_labels=max_labels, max_label_tokens=max_label_tokens, right_prefix=right_prefix, on_error=on_error)) }}
{%- endmacro %}

{% macro default__semantic_join(left, right, left_text, right_text, predicate, left_id=none, right_id=none, left_embedding=none, right_embedding=none, plan='auto', candidates=none, min_similarity=none, model=none, max_labels=100, max_label_tokens=4000, right_prefix='right_', on_error=none) -%}
  {%- set args = {'left_text': left_text, 'right_text': right_text, 'predicate': predicate, 'left_id': left_id,
                  'right_id': right_id, 'left_embedding': left_embedding, 'right_embedding': right_embedding,
                  'plan': plan, 'candidates': candidates, 'min_similarity': min_similarity, 'model': model,
                  'max_labels': max_labels, 'max_label_tokens': max_label_tokens} -%}
  {%- do adapter.llm_semantic_join_plan(args) -%}  {#- a compile error naming each bad argument, at parse time too -#}
  {%- if not execute -%}
    {%- do config(tags=['llm']) -%}
    {{ return('select 1 as pg_llm_parse_placeholder') }}
  {%- endif -%}
  {%- set left_cols = pg_llm.vector_query_columns(left) -%}
  {%- set right_cols = pg_llm.vector_query_columns(right) -%}
  {%- set inputs_exist = left_cols is not none and right_cols is not none -%}
  {%- if not inputs_exist -%}
    {#- compile / docs before the inputs exist: the join's shape from the named columns, nothing counted -#}
    {%- set left_cols = [left_id, left_text] + ([left_embedding] if left_embedding else []) -%}
    {%- set right_cols = [right_id, right_text] + ([right_embedding] if right_embedding else []) -%}
  {%- endif -%}
  {%- for side, cols, names in [('left', left_cols, [('left_id', left_id), ('left_text', left_text), ('left_embedding', left_embedding)]), ('right', right_cols, [('right_id', right_id), ('right_text', right_text), ('right_embedding', right_embedding)])] -%}
    {%- for arg, col in names if col is not none and col not in cols -%}
      {{ exceptions.raise_compiler_error("pg_llm.semantic_join: " ~ arg ~ "='" ~ col ~ "' is not a column of the " ~ side ~ " relation (its columns: " ~ cols | join(', ') ~ "); pass one of those column names") }}
    {%- endfor -%}
  {%- endfor -%}
  {%- set q = adapter.quote -%}
  {%- set L = pg_llm.vector_from_sql(left) -%}
  {%- set R = pg_llm.vector_from_sql(right) -%}
  {%- set left_out = [] -%}{%- set right_out = [] -%}{%- set pair_cols = [] -%}
  {%- for c in left_cols if c != left_embedding -%}
    {%- do left_out.append(q(c)) -%}{%- do pair_cols.append('pg_llm_l.' ~ q(c)) -%}
  {%- endfor -%}
  {%- for c in right_cols if c != right_embedding -%}
    {%- do right_out.append(q(right_prefix ~ c)) -%}{%- do pair_cols.append('pg_llm_r.' ~ q(c) ~ ' as ' ~ q(right_prefix ~ c)) -%}
  {%- endfor -%}
  {%- do pair_cols.append('pg_llm_l.' ~ q(left_text) ~ '::text as pg_llm_left_text') -%}
  {%- do pair_cols.append('pg_llm_r.' ~ q(right_text) ~ '::text as pg_llm_right_text') -%}
  {%- set blocked_sql = none -%}
  {%- if left_embedding -%}
    {%- set vector_schema = pg_llm.vector_extension_schema() -%}
    {%- set distance = pg_llm.vector_distance_sql('pg_llm_r.' ~ q(right_embedding), 'pg_llm_l.' ~ q(left_embedding), vector_schema) -%}
    {%- set blocked_sql -%}
select {{ pair_cols | join(', ') }}
from {{ L }} as pg_llm_l
cross join lateral (
  select pg_llm_r.* from {{ R }} as pg_llm_r
  where pg_llm_r.{{ q(right_embedding) }} is not null
  {%- if min_similarity is not none %} and 1 - {{ distance }} >= {{ min_similarity }}{% endif %}
  order by {{ distance }}, pg_llm_r.{{ q(right_id) }}
  {%- if candidates is not none %} limit {{ candidates | int }}{% endif %}
) as pg_llm_r
where pg_llm_l.{{ q(left_embedding) }} is not null
    {%- endset -%}
  {%- endif -%}
  {%- set node = context.get('model') -%}
  {%- if inputs_exist -%}
    {%- set choice = adapter.llm_semantic_join_plan(args, L, R, blocked_sql, node_id=node.unique_id if node else none) -%}
  {%- else -%}
    {%- set choice = {'chosen': 'blocked' if plan == 'blocked' else 'nested', 'labels': []} -%}
  {%- endif -%}
  {%- if choice['chosen'] == 'classify' -%}
    {%- set matches = pg_llm.llm_enrich('select pg_llm_l.*, pg_llm_l.' ~ q(left_text) ~ '::text as pg_llm_left_text from ' ~ L ~ ' as pg_llm_l',
          {'pg_llm_matches': pg_llm.classify('pg_llm_left_text', labels=choice['labels'], instructions=predicate, model=model, multi_label=true)},
          on_error=on_error) -%}
select {% for c in left_out %}pg_llm_m.{{ c }}, {% endfor %}{% for c in right_cols if c != right_embedding %}pg_llm_r.{{ q(c) }} as {{ q(right_prefix ~ c) }}{{ ', ' if not loop.last }}{% endfor %}
from ({{ matches }}) as pg_llm_m
join {{ R }} as pg_llm_r on btrim(pg_llm_r.{{ q(right_text) }}::text) = any(pg_llm_m.pg_llm_matches)
  {%- else -%}
    {%- set pairs = blocked_sql if choice['chosen'] == 'blocked' else 'select ' ~ pair_cols | join(', ') ~ ' from ' ~ L ~ ' as pg_llm_l cross join ' ~ R ~ ' as pg_llm_r' -%}
    {%- set holds = pg_llm.llm_enrich(pairs,
          {'pg_llm_holds': pg_llm.filter(pg_llm.semantic_join_pair_sql('pg_llm_left_text', 'pg_llm_right_text'), predicate, model=model)},
          on_error=on_error) -%}
select {{ (left_out + right_out) | join(', ') }}
from ({{ holds }}) as pg_llm_m
where pg_llm_m.pg_llm_holds
  {%- endif -%}
{%- endmacro %}
