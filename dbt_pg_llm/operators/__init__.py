"""Operators beyond one row per prompt (ARCHITECTURE.md, "Operators beyond one row"): each is a plan of
keyed calls on the same cache, claims, journal, spend cap and audit as the text columns.

``embed``: embeddings paid once per distinct (model, dimensions, text), stored in ``llm_embeddings``;
``aggregate`` (a tree of keyed steps per group), ``top_k`` (a tournament of windows), ``semantic_join``
(the plan with the fewest calls); ``frame``: ``LlmFrameSession``, every column kind and ``embed``
over a pandas Series (dbt Python models' ``session.llm``).
"""
from .embed import EmbedReport, embed, embed_texts, embedding_fingerprint, embedding_key, embedding_key_sql

__all__ = ["EmbedReport", "embed", "embed_texts", "embedding_fingerprint", "embedding_key", "embedding_key_sql"]
