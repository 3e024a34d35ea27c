"""ModelRegistry: the named models of one process, shared by every dbt thread.

dbt runs models on several threads at once and Python models may register models lazily, so every
operation holds a lock; iteration works on a snapshot so a concurrent ``register`` never raises
"dictionary changed size during iteration". Errors name the model and list the known ones, because
the usual cause is a typo in a model's config.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

from ..errors import RegistryError

__all__ = ["ModelRegistry"]


class ModelRegistry:
    """Models by name. A model is any object with a ``name`` attribute (normally ``Model``)."""

    def __init__(self, models: Any = ()):
        self._lock = threading.RLock()
        self._models: dict[str, Any] = {}
        for model in models:
            self.register(model)

    def register(self, model: Any) -> Any:
        """Add ``model``; returns it. A name can be registered once (unregister it to replace it)."""
        name = getattr(model, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"cannot register {type(model).__name__}: a model needs a non-empty string "
                                f"'name' (got {name!r})")
        with self._lock:
            if name in self._models:
                raise RegistryError(f"model '{name}' is already registered; "
                                    "unregister it first or use another name")
            self._models[name] = model
        return model

    def get(self, name: str) -> Any:
        with self._lock:
            try:
                return self._models[name]
            except (KeyError, TypeError):
                raise RegistryError(self._unknown_message(name)) from None

    def unregister(self, name: str) -> Any:
        """Remove and return the model called ``name``."""
        with self._lock:
            try:
                return self._models.pop(name)
            except (KeyError, TypeError):
                raise RegistryError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        with self._lock:
            return list(self._models)

    def _unknown_message(self, name: Any) -> str:
        known = sorted(self._models)
        listing = f"known models: {', '.join(known)}" if known else "no models are registered"
        return f"unknown model {_quote(name)}; {listing}"

    def __contains__(self, name: object) -> bool:
        with self._lock:
            try:
                return name in self._models
            except TypeError:  # unhashable
                return False

    def __iter__(self) -> Iterator[Any]:
        """Iterate over the models (a snapshot taken when iteration starts)."""
        with self._lock:
            snapshot = list(self._models.values())
        return iter(snapshot)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.names()!r})"


def _quote(name: Any) -> str:
    return f"'{name}'" if isinstance(name, str) else repr(name)
