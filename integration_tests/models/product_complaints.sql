-- One answer per product over all its reviews (pg_llm.llm_aggregate): the first 200 reviews, reduced
-- hierarchically where a product's reviews pass max_input_tokens (small here so the demo shows a tree).
select *
from {{ pg_llm.llm_aggregate(
    "select product_id, review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 200",
    'product_id',
    'review_text',
    'Summarise the main complaints about this product in two sentences.',
    order_by='review_id',
    max_input_tokens=800,
    max_tokens=60,
    answer_column='complaints'
) }}
