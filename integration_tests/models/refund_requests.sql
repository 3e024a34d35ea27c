-- The filter column as a `where` of a downstream model (no LLM request here).
select review_id, product_id, review_text, wants_refund__confidence
from {{ ref('review_flags') }}
where wants_refund
