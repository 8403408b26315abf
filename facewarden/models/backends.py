"""A registry of named backends of one kind (segmenter, embedder...), rembg-style: each
backend's own file registers its builder (and, beside it, its pinned model entries with
``registry.register_model``); looking up a name nobody registered raises ``UnknownBackend``
listing the names that are. A new backend is one new file plus its module name here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from facewarden.errors import UnknownBackend


class BackendRegistry:
    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind = kind
        self.modules = modules
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(build: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders and self._builders[name] is not build:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._builders[name] = build
            return build
        return deco

    def _load(self) -> dict[str, Callable[..., Any]]:
        for module in self.modules:
            importlib.import_module(module)
        return self._builders

    def names(self) -> tuple[str, ...]:
        return tuple(self._load())

    def builder(self, name: str) -> Callable[..., Any]:
        known = self._load()
        if name not in known:
            raise UnknownBackend(self.kind, name, tuple(known))
        return known[name]
