{#- The first 50 reviews with an embedding of their text (pg_llm.embed: vector(64) where the database
    has pgvector, else real[]). One request for all of them (up to 2,048 texts a request), each
    distinct text paid once and cached in llm_audit.llm_embeddings: a rebuild sends nothing. -#}
{{ pg_llm.llm_enrich(
    "select review_id, product_name, rating, review_text from " ~ ref('product_reviews') ~ " where review_id <= 50",
    {'embedding': pg_llm.embed('review_text', dimensions=64)}
) }}
