"""Opening the configured stores by name; each backend registers itself in its own file."""

from __future__ import annotations

from typing import Any

from facewarden.storage.base import STORES, Store


def open_store(name: str, cfg: Any) -> Store:
    return STORES.get(cfg.type)(name, cfg)


def open_stores(configs: dict[str, Any]) -> dict[str, Store]:
    return {name: open_store(name, cfg) for name, cfg in configs.items()}
