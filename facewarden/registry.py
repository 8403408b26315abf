"""One registry shape for every kind of backend (handler, store, queue, source), rembg-style.

Each backend's own file calls ``REGISTRY.register(name, factory)`` when imported; the
registry imports its built-in modules on first lookup, so adding a backend is one new file
plus its module name in the list below it. An unknown name raises ``UnknownBackend``,
which lists the names that do exist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from facewarden.errors import UnknownBackend

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    def __init__(self, kind: str, package: str, modules: Iterable[str]):
        self.kind = kind
        self.package = package
        self.modules = tuple(modules)
        self._factories: dict[str, F] = {}
        self._loaded = False

    def register(self, name: str, factory: F) -> F:
        self._factories[name] = factory
        return factory

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self.modules:
            try:
                importlib.import_module(f"{self.package}.{module}")
            except ModuleNotFoundError as exc:
                # An optional backend whose own file is absent is skipped; a backend whose
                # dependency is missing fails loudly.
                if exc.name != f"{self.package}.{module}":
                    raise

    def names(self) -> list[str]:
        self._load()
        return sorted(self._factories)

    def get(self, name: str) -> F:
        self._load()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownBackend(self.kind, name, self._factories) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._factories
