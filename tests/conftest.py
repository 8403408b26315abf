"""Shared fixtures. Test files use them by name only (nothing is imported from here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real photos shared by the project (never copied into the repo).
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared photo set is missing at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def face_photo(data_dir: Path) -> Path:
    """A real photo with faces in it (PASCAL VOC)."""
    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))
    if not photos:
        pytest.fail(f"no JPEG under {data_dir / 'faces-pascal'}")
    return photos[0]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The installed model files, where `uv run facewarden models install` puts them (the
    XDG data dir, or FACEWARDEN_MODELS_DIR); a missing one fails the test with the command
    that fixes it."""
    from facewarden.config import default_models_dir
    from facewarden.models.registry import MODELS, ModelStore, PackageFile

    root = default_models_dir()
    store = ModelStore(root)
    missing = [spec.name for spec in MODELS.values()
               if not isinstance(spec.origin, PackageFile) and not store.path_of(spec).is_file()]
    if missing:
        pytest.fail(f"model file(s) {missing} missing under {root}: "
                    "run `uv run facewarden models install`")
    return root


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A fresh folder per test (short name for tmp_path)."""
    return tmp_path


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh facewarden state directory (queue, audit log, quarantine) per test."""
    path = tmp_path / "state"
    path.mkdir()
    yield path
