{{ config(materialized='incremental', unique_key='review_id', incremental_strategy='delete+insert') }}

-- Only reviews not yet in this table are enriched (and only their uncached texts are requested).
{% set new_reviews %}
select review_id, product_id, rating, review_text, review_date
from {{ ref('product_reviews') }}
where review_id <= {{ var('max_review_id') }}
{% if is_incremental() %}
  and review_id > (select coalesce(max(review_id), 0) from {{ this }})
{% endif %}
{% endset %}

{{ pg_llm.llm_enrich(new_reviews, {
    'sentiment': pg_llm.classify('review_text', labels=['positive', 'negative', 'neutral']),
    'summary': pg_llm.complete("'Summarize in one sentence: ' || review_text", max_tokens=40)
}) }}
