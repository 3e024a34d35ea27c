-- Structured facts (jsonb, valid for the schema) plus typed columns read out of them.
-- max_tokens bounds the answer: the estimate and the spend cap count it as its output. The simulator's
-- facts take <= 26 tokens; give a real model what its answers need.
{% set facts_schema = {
    'type': 'object',
    'properties': {
      'product': {'type': 'string'},
      'issues': {'type': 'array', 'items': {'type': 'string'}},
      'would_recommend': {'type': 'boolean'}
    },
    'required': ['product', 'issues', 'would_recommend']
} %}

with enriched as (
  {{ pg_llm.llm_enrich(
      "select review_id, product_id, product_name, review_text from " ~ ref('product_reviews'),
      {
        'facts': pg_llm.extract(
            "'Product: ' || product_name || E'\\n' || review_text",
            schema=facts_schema,
            instructions='Extract the product, the list of problems mentioned, and whether the reviewer recommends it.',
            max_tokens=40
        )
      }
  ) }}
)
select
  enriched.*,
  (facts ->> 'would_recommend')::boolean as would_recommend,
  jsonb_array_length(facts -> 'issues') as issue_count
from enriched
