-- A one-sentence summary per review (free text).
{{ pg_llm.llm_enrich(
    "select review_id, product_name, review_text from " ~ ref('product_reviews'),
    {
      'summary': pg_llm.complete(
          "'Summarize this review of ' || product_name || ' in one short sentence: ' || review_text",
          system='You write terse, neutral summaries of customer reviews.',
          max_tokens=40
      )
    }
) }}
