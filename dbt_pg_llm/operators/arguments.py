"""Checks of an operator macro's arguments, shared so every operator words its errors alike.

Each returns problem strings (``[]``: fine) naming the argument and the fix; the operator gathers
them and raises one ``ConfigError`` so the user sees every problem at once.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["missing_text_problems", "whole_number_problem"]


def missing_text_problems(args: Mapping[str, Any], names_and_examples: Iterable[tuple[str, str]]) -> list[str]:
    """One problem per required text argument that is absent, not text, or blank."""
    return [f"{name}: missing; give it as text, e.g. {name}={example}"
            for name, example in names_and_examples
            if not isinstance(args.get(name), str) or not args.get(name).strip()]


def whole_number_problem(name: str, value: Any, low: int, example: Any) -> list[str]:
    """``[problem]`` when ``value`` is not a whole number >= ``low`` (a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return [f"{name}: {value!r} must be a whole number >= {low}, e.g. {name}={example}"]
    return []
