-- The sentiment of the first 120 reviews through sim_sure, a guaranteed cascade (profiles.yml): sim
-- answers where its confidence clears a threshold chosen on a 50-key sample also sent to sim_large, so
-- that with probability 95% at least 90% of the answers agree with sim_large (decision 0033). A subset,
-- because every run of a new prompt or model pays the sample twice; the calibration is stored in
-- llm_audit.llm_cascade_calibrations and reruns reuse it.
{{ config(tags=['guaranteed_cascade']) }}
{{ pg_llm.llm_enrich(
    "select review_id, rating, review_text from " ~ ref('product_reviews') ~ " where review_id <= 120",
    {
      'sentiment': pg_llm.classify(
          'review_text',
          labels=['positive', 'negative', 'neutral'],
          instructions='Classify the overall sentiment of this product review.',
          model='sim_sure'
      )
    }
) }}
