"""Each segmentation backend on real photos from segmentation-dev: the Segmenter
contract (float32 in [0, 1], image-sized) and a mask that really matches the person."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facewarden.config import default_models_dir
from facewarden.errors import UnknownBackend
from facewarden.models.mask_refine import person_box
from facewarden.models.protocols import Segmenter
from facewarden.models.segmenters import FUSED_THRESHOLD, FusedSegmenter, make_segmenter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "segmentation-dev"
MODELS = default_models_dir()
# Single-subject photos where the pseudo ground truth is unambiguous.
SAMPLES = ["1", "11", "126"]


@pytest.fixture(scope="module")
def fused() -> FusedSegmenter:
    return make_segmenter("fused", MODELS)


def _sample(stem: str) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(Image.open(DATA / "images" / f"{stem}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(DATA / "masks" / f"{stem}.png").convert("L"))
    gt = cv2.resize(gt, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST) > 127
    return rgb, gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.slow
def test_each_backend_meets_the_contract_and_finds_the_person(fused):
    backends: list[Segmenter] = [*fused._parts, fused]
    for seg in backends:
        assert isinstance(seg, Segmenter)
        assert seg.model_ids() and all(len(m.sha256) == 64 for m in seg.model_ids())
        for stem in SAMPLES:
            rgb, gt = _sample(stem)
            mask = seg.segment(rgb)
            assert mask.dtype == np.float32 and mask.shape == rgb.shape[:2]
            assert mask.min() >= 0.0 and mask.max() <= 1.0
            assert _iou(mask > 0.5, gt) > 0.8, (seg.name, stem)


def test_empty_scene_gives_little_person(fused):
    """A flat synthetic wall: no person, so almost nothing may come out as person."""
    wall = np.full((240, 320, 3), (180, 170, 150), np.uint8)
    assert (fused.segment(wall) > 0.5).mean() < 0.05


def test_fuse_threshold_maps_to_half():
    a = np.array([[FUSED_THRESHOLD, 0.0, 1.0]], np.float32)
    out = FusedSegmenter.fuse([a, a])
    assert out[0, 0] == pytest.approx(0.5) and out[0, 1] == 0 and out[0, 2] == 1


def test_person_box_grows_by_the_longer_side_and_falls_back_to_the_frame():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 90:100] = True  # 10 wide, 20 tall
    assert person_box(mask, 0.5) == (80, 30, 110, 70)
    assert person_box(mask, 10.0) == (0, 0, 200, 100)
    assert person_box(np.zeros((100, 200), bool), 0.5) == (0, 0, 200, 100)


def test_small_person_in_a_street_scene_is_segmented_on_a_crop(fused):
    """A walker filling ~6% of a GRAZ street photo: on the whole frame both models see him
    at a few dozen pixels and the fused mask scored 0.61 IoU; on the crop it is far better."""
    rgb, gt = _sample("242")
    assert _iou(fused.segment(rgb) > 0.5, gt) > 0.8


def test_unknown_backend_is_rejected():
    with pytest.raises(UnknownBackend) as err:
        make_segmenter("sam", MODELS)
    assert err.value.kind == "segmenter" and set(err.value.known) == {"fused", "rembg", "mediapipe"}
