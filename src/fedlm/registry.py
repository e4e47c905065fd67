"""Explicit registries: a dict, ``register`` and ``create``; no import side effects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fedlm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named constructors of one family (aggregators, codecs, ...).

    Args:
        family: what the entries are, used in error messages ("aggregator").
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
        """Add ``factory`` under ``name``; a duplicate name is an error."""
        if name in self._entries:
            raise ConfigError(f"{self.family} {name!r} is already registered; pick another name")
        self._entries[name] = factory
        return factory

    def create(self, name: str, /, **kwargs: object) -> T:
        """Build the entry called ``name``; an unknown name lists the known ones."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.family} {name!r}; choose one of {sorted(self._entries)}")
        return self._entries[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
