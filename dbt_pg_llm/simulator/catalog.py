"""The simulator's model catalogue: which model names it serves, and ``GET /v1/models`` in both shapes.

``--models a,b`` lists the models served; a request naming another model gets 404 like a real API.
Without it every model name is accepted (old behaviour; the list shows the defaults below).
"""
from __future__ import annotations

__all__ = ["DEFAULT_MODELS", "openai_model", "openai_model_list", "anthropic_model", "anthropic_model_list",
           "display_name"]

DEFAULT_MODELS = ("sim-small", "sim-large", "gpt-4o-mini", "claude-3-5-haiku-latest")
_CREATED_AT = "2024-10-22T00:00:00Z"  # a fixed release date: the catalogue is deterministic
_CREATED_UNIX = 1729555200


def display_name(model_id: str) -> str:
    """``claude-3-5-haiku-latest`` -> ``Claude 3 5 Haiku Latest`` (Anthropic's list carries a display name)."""
    return " ".join(part.capitalize() for part in model_id.replace("_", "-").split("-") if part)


def openai_model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": _CREATED_UNIX, "owned_by": "dbt-pg-llm-simulator"}


def openai_model_list(models: tuple[str, ...]) -> dict:
    return {"object": "list", "data": [openai_model(m) for m in models]}


def anthropic_model(model_id: str) -> dict:
    return {"type": "model", "id": model_id, "display_name": display_name(model_id), "created_at": _CREATED_AT}


def anthropic_model_list(models: tuple[str, ...], limit: int = 20, after_id: str | None = None,
                         before_id: str | None = None) -> dict:
    """Anthropic's paginated list: ``data``, ``has_more``, ``first_id``, ``last_id``."""
    ids = list(models)
    if after_id in ids:
        ids = ids[ids.index(after_id) + 1:]
    elif before_id in ids:
        ids = ids[: ids.index(before_id)]
        ids = ids[-limit:] if limit else ids
    page = ids[:limit]
    return {"data": [anthropic_model(m) for m in page], "has_more": len(ids) > len(page),
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}
