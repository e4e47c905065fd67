"""Explicit registries: a dict, ``register`` and ``create``; no import side effects.

An entry is a factory, or the import path ``"package.module:Name"`` of one, which is
imported on first use. The path form lets a torch-free module (the config layer) hold a
family's names, and so be its single source, while the classes behind them load only when
a run builds one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fedlm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named constructors of one family (aggregators, codecs, ...).

    Args:
        family: what the entries are, used in error messages ("aggregator").
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T] | str] = {}
        self._info: dict[str, Any] = {}

    def register(self, name: str, factory: Callable[..., T] | str, *, info: Any = None) -> Callable[..., T] | str:
        """Add ``factory`` (or its ``"module:Name"`` path) under ``name``; a duplicate is an error.

        ``info`` is free metadata a family keeps beside the entry (e.g. an aggregator's
        assumptions), readable without importing the factory.
        """
        if name in self._entries:
            raise ConfigError(f"{self.family} {name!r} is already registered; pick another name")
        if isinstance(factory, str) and ":" not in factory:
            raise ConfigError(f"{self.family} {name!r}: an import path looks like 'package.module:Name', got {factory!r}")
        self._entries[name] = factory
        self._info[name] = info
        return factory

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name`` (imported now if registered by path)."""
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def create(self, name: str, /, **kwargs: object) -> T:
        """Build the entry called ``name``; an unknown name lists the known ones."""
        return self.factory(name)(**kwargs)

    def info(self, name: str) -> Any:
        """The metadata registered with ``name``."""
        self.check(name)
        return self._info[name]

    def check(self, name: str) -> None:
        """Raise ``ConfigError`` unless ``name`` is registered."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.family} {name!r}; choose one of {self.names()}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The names in registration order (for families whose order matters)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
