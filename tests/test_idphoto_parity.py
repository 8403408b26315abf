"""ID-photo parity with HivisionIDPhotos: its 18 size presets by name, and a transparent
background (PNG with alpha), on real demo portraits."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facewarden.config.paths import default_models_dir
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.idphoto import IdPhotoHandler
from facewarden.handlers.idphoto_presets import HIVISION_SIZES, PRESETS, resolve
from facewarden.handlers.imageio import decode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = default_models_dir()
DEMO = DATA / "idphoto-specs" / "demo" / "images"
SIZE_LIST = DATA / "idphoto-specs" / "demo" / "assets" / "size_list_EN.csv"


def _hivision_rows() -> list[tuple[str, int, int]]:
    with open(SIZE_LIST, newline="") as fh:
        return [(r["Name"].strip(), int(r["Width"]), int(r["Height"])) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def handler() -> IdPhotoHandler:
    h = IdPhotoHandler()
    h.warm_up(HandlerContext(MODELS), {})
    return h


def _run(handler: IdPhotoHandler, photo: str, **params):
    return handler.run(decode((DEMO / photo).read_bytes()), handler.validate_params(params), HandlerContext(MODELS))


def test_all_18_hivision_sizes_resolve_by_their_own_names_to_their_pixel_sizes() -> None:
    rows = _hivision_rows()
    assert len(rows) == 18 and len(HIVISION_SIZES) == 18
    for name, width, height in rows:  # the names exactly as size_list_EN.csv spells them
        p = resolve(name)
        assert (p.width_px, p.height_px, p.dpi) == (width, height, 300), name
    # Our table lists the same sizes in the same order.
    assert [(w, h) for _n, w, h in HIVISION_SIZES] == [(w, h) for _n, w, h in rows]


def test_equal_sizes_share_one_preset_so_equal_requests_share_an_idempotency_key(handler) -> None:
    assert handler.validate_params({"size": "One inch"}) == handler.validate_params({"size": "1-inch"})
    assert handler.validate_params({"size": "American visa"})["size"] == "us-passport"
    assert handler.validate_params({"size": "Korean visa"})["size"] == "small-2-inch"
    new = {"five-inches", "english-cet-4-and-cet-6-exams", "graduate-entrance-exam", "social-security-card"}
    assert new <= set(PRESETS)
    # Today's presets are all still there.
    assert {"1-inch", "2-inch", "china-passport", "us-passport", "schengen"} <= set(PRESETS)


@pytest.mark.parametrize("name", ["Five inches", "English CET-4 and CET-6 exams", "Graduate entrance exam",
                                  "Social security card"])
def test_new_hivision_sizes_give_exact_photos(handler, name: str) -> None:
    res = _run(handler, "test2.jpg", size=name, max_upscale=4)
    im = Image.open(io.BytesIO(res.outputs[0].data))
    p = resolve(name)
    assert im.size == (p.width_px, p.height_px)
    assert 0.5 <= res.facts["head_ratio"] <= 0.7


def test_transparent_background_is_png_with_alpha(handler) -> None:
    params = handler.validate_params({"background": "transparent", "format": "jpeg"})
    assert params["background"] == "transparent" and params["format"] == "png"  # forced
    res = _run(handler, "test0.jpg", background="transparent", sheet=True)
    out = res.outputs[0]
    assert out.extension == ".png" and out.content_type == "image/png"
    im = Image.open(io.BytesIO(out.data))
    assert im.format == "PNG" and im.mode == "RGBA" and im.size == (295, 413)
    assert "exif" not in im.info and not im.getexif()
    rgba = np.asarray(im)
    alpha = rgba[..., 3].astype(int)
    h, w = alpha.shape
    # Background (top row, upper sides) fully transparent; the face centre fully opaque.
    assert alpha[0].max() == 0 and alpha[: h // 4, 0].max() == 0 and alpha[: h // 4, -1].max() == 0
    face_y = int(h * (0.10 + 0.6 * 0.5))  # middle of the head by the preset's layout
    assert alpha[face_y, w // 2] == 255
    assert 0.2 < (alpha > 127).mean() < 0.9
    # The opaque pixels are the person's, not a flat fill: compare with a white-background run.
    white = np.asarray(Image.open(io.BytesIO(_run(handler, "test0.jpg", background="white",
                                                  format="png").outputs[0].data)).convert("RGB")).astype(int)
    opaque = alpha == 255
    assert np.abs(rgba[..., :3].astype(int)[opaque] - white[opaque]).max() <= 1
    sheet = Image.open(io.BytesIO(res.outputs[1].data))
    assert sheet.mode == "RGBA" and np.asarray(sheet)[..., 3].min() == 0
    assert res.facts["background"] == "transparent"
