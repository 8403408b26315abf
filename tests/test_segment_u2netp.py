"""u2netp without rembg gives rembg's masks.

The references in tests/data/u2netp_rembg were computed by rembg 2.0.86 itself (its
``u2net_custom`` session on the same registry file) on segmentation-dev, before rembg was
dropped from the dependencies; they are our own numbers, not third-party data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facewarden.models.segment_rembg import RembgSegmenter

REFS = Path(__file__).resolve().parent / "data" / "u2netp_rembg"


@pytest.fixture(scope="module")
def segmenter(models_dir: Path) -> RembgSegmenter:
    return RembgSegmenter(models_dir)


def _photo(data_dir: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(data_dir / "segmentation-dev" / "images" / name).convert("RGB"))


@pytest.mark.parametrize("png", sorted(p.name for p in REFS.glob("*.png")))
def test_mask_matches_rembg_within_one_level(segmenter: RembgSegmenter, data_dir: Path, png: str) -> None:
    ref = np.asarray(Image.open(REFS / png)).astype(int)
    ours = segmenter.mask_u8(_photo(data_dir, png.replace(".png", ".jpg"))).astype(int)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1, "u2netp mask differs from rembg's by more than 1/255"
    # The mask is a real person mask, not an empty or full frame.
    assert 0.05 < (ours > 127).mean() < 0.95


def test_masks_are_bit_identical_to_rembg_on_a_quarter_of_the_dev_set(segmenter: RembgSegmenter,
                                                                       data_dir: Path) -> None:
    refs = json.loads((REFS / "masks.json").read_text())["masks_sha256"]
    names = sorted(refs)[::4]
    assert len(names) >= 20
    differ = [n for n in names
              if hashlib.sha256(segmenter.mask_u8(_photo(data_dir, n)).tobytes()).hexdigest() != refs[n]]
    assert not differ, f"masks differ from rembg's on {differ}"


def test_segment_is_the_mask_as_float(segmenter: RembgSegmenter, data_dir: Path) -> None:
    rgb = _photo(data_dir, "2.jpg")
    soft = segmenter.segment(rgb)
    assert soft.dtype == np.float32 and soft.shape == rgb.shape[:2]
    assert np.array_equal(np.round(soft * 255).astype(np.uint8), segmenter.mask_u8(rgb))
