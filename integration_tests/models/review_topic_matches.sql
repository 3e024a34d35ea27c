{#- For each of the 50 embedded reviews, its 3 nearest topics of the catalogue by cosine similarity
    (pg_llm.similarity_join: an exact scan here, an HNSW index would serve it on a large catalogue).
    No LLM request: both sides are already embedded. -#}
{{ pg_llm.similarity_join(ref('review_embeddings'), ref('review_topic_catalog'), 'embedding', 'embedding', k=3,
                          right_prefix='catalog_') }}
