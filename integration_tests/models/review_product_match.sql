-- Which products each of the first 20 reviews talks about (pg_llm.semantic_join). 22 distinct product
-- names fit as labels, so plan='auto' takes the classify rewrite: one multi-label call per review text
-- (20 calls) instead of one filter call per (review, product) pair (20 x 22 = 440); the dbt log says both.
{{ pg_llm.semantic_join(
    "select review_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 20",
    "select distinct product_id, product_name from " ~ ref('product_reviews'),
    'review_text', 'product_name',
    'Does this review talk about this product?',
    left_id='review_id', right_id='product_id'
) }}
