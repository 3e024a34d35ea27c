"""Python model: classify each review's main topic with session.llm over a pandas Series."""

TOPICS = ["quality", "durability", "comfort", "performance", "price", "shipping", "other"]


def model(dbt, session):
    dbt.config(materialized="table")
    reviews = dbt.ref("product_reviews")
    reviews = reviews[reviews["review_text"].notna()].copy()
    reviews["topic"] = session.llm.classify(
        reviews["review_text"],
        labels=TOPICS,
        instructions="Which topic does this product review mostly talk about?",
        column="topic",  # llm_results.column_name: pg_llm.invalidate --args '{node: review_topics, column: topic}'
    )
    return reviews[["review_id", "product_id", "rating", "topic"]]
