"""Opening the configured stores by name; one backend per file."""

from __future__ import annotations

from typing import Any

from facewarden.storage.base import Store


def open_store(name: str, cfg: Any) -> Store:
    if cfg.type == "local":
        from facewarden.storage.local import LocalStore

        return LocalStore(name, cfg.root, fsync=cfg.fsync)
    if cfg.type == "s3":
        from facewarden.storage.s3 import S3Store

        return S3Store(name, cfg)
    raise ValueError(f"unknown store type {cfg.type!r}")


def open_stores(configs: dict[str, Any]) -> dict[str, Store]:
    return {name: open_store(name, cfg) for name, cfg in configs.items()}
