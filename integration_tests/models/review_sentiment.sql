-- One label per review; each distinct review text is requested once, ever (cached in llm_audit).
{{ pg_llm.llm_enrich(
    "select review_id, product_id, rating, review_text from " ~ ref('product_reviews'),
    {
      'sentiment': pg_llm.classify(
          'review_text',
          labels=['positive', 'negative', 'neutral'],
          instructions='Classify the overall sentiment of this product review.'
      )
    }
) }}
