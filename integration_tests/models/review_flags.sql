-- A filter and a multi-label column on the first 60 reviews: one request per distinct text and column,
-- cached like every LLM column (a rerun pays nothing).
{{ pg_llm.llm_enrich(
    "select review_id, product_id, review_text from " ~ ref('product_reviews') ~ " where review_id <= 60",
    {
      'wants_refund': pg_llm.filter('review_text', 'Does the reviewer ask for a refund?'),
      'aspects': pg_llm.classify('review_text', labels=['price', 'battery', 'noise', 'comfortable', 'size'],
                                 multi_label=true,
                                 instructions='Which aspects of the product does the review talk about?')
    }
) }}
