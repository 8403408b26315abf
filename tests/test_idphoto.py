"""idphoto on real portraits from ../shared/data: exact sizes, dpi, flat background,
head placement re-measured on the output, and each rejection reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facewarden.config import default_models_dir
from facewarden.errors import InputRejected
from facewarden.handlers import base
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.idphoto import IdPhotoHandler
from facewarden.handlers.idphoto_presets import COLOURS, PRESETS, resolve
from facewarden.handlers.imageio import decode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = default_models_dir()
DEMO = DATA / "idphoto-specs" / "demo" / "images"
PORTRAITS = sorted(DEMO.glob("*.jpg"))


@pytest.fixture(scope="module")
def handler() -> IdPhotoHandler:
    h = IdPhotoHandler()
    h.warm_up(HandlerContext(MODELS), {})
    return h


@pytest.fixture(scope="module")
def ctx() -> HandlerContext:
    return HandlerContext(MODELS)


def _load(path: Path):
    return decode(path.read_bytes())


def _run(handler, ctx, image, **params):
    p = handler.validate_params(params)
    return handler.run(image, p, ctx)


def _png(result) -> Image.Image:
    return Image.open(io.BytesIO(result.outputs[0].data))


def _from_rgb(rgb: np.ndarray):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return decode(buf.getvalue())


def test_registered_under_its_name():
    assert isinstance(base.get("idphoto"), IdPhotoHandler)


def test_presets_match_public_size_table():
    """Pixel sizes agree with HivisionIDPhotos' size_list_EN.csv (Height,Width)."""
    with open(DATA / "idphoto-specs/demo/assets/size_list_EN.csv", newline="") as fh:
        rows = {r["Name"].strip(): (int(r["Width"]), int(r["Height"])) for r in csv.DictReader(fh)}
    pairs = {"One inch": "1-inch", "Small one inch": "small-1-inch", "Large one inch": "large-1-inch",
             "Small two inches": "small-2-inch", "Large two inches": "large-2-inch",
             "American visa": "us-passport"}
    for csv_name, preset in pairs.items():
        p = PRESETS[preset]
        assert (p.width_px, p.height_px) == rows[csv_name], preset
    for p in PRESETS.values():  # mm and px agree at 300 dpi within a pixel
        assert abs(p.width_mm / 25.4 * 300 - p.width_px) <= 1.5, p.name
        assert abs(p.height_mm / 25.4 * 300 - p.height_px) <= 1.5, p.name
    assert (PRESETS["2-inch"].width_px, PRESETS["2-inch"].height_px) == (413, 579)
    assert (PRESETS["china-passport"].width_px, PRESETS["china-passport"].height_px) == (390, 567)


def test_custom_sizes_and_bad_params():
    p = resolve("35,45,300")
    assert (p.width_px, p.height_px, p.dpi) == (413, 531, 300)
    assert (resolve("400x500").width_px, resolve("400x500").height_px) == (400, 500)
    h = IdPhotoHandler()
    assert h.validate_params({"background": "#FF0000"})["background"] == "#ff0000"
    assert h.validate_params({"background": "blue", "sheet": "yes"})["sheet"] is True
    for bad in ({"size": "poster"}, {"background": "mauve"}, {"format": "gif"},
                {"max_upscale": "0"}, {"feather": "-1"}, {"sizes": "1-inch"}):
        with pytest.raises(InputRejected) as exc:
            h.validate_params(bad)
        assert exc.value.code == "params.invalid"


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_exact_size_dpi_no_metadata(handler, ctx, preset):
    # max_upscale 4: the demo portrait's head is too small for five-inches (1050x1499) at 2.
    res = _run(handler, ctx, _load(DEMO / "test2.jpg"), size=preset, background="white", max_upscale=4)
    p = PRESETS[preset]
    im = _png(res)
    assert im.format == "JPEG"
    assert im.size == (p.width_px, p.height_px)
    assert tuple(round(d) for d in im.info["dpi"]) == (300, 300)
    assert "exif" not in im.info and not im.getexif()
    assert res.facts["preset"] == preset and res.outputs[0].content_type == "image/jpeg"


@pytest.mark.slow
@pytest.mark.parametrize("colour", ["red", "blue", "white", "#2a7f3c"])
def test_border_pixels_are_the_requested_colour(handler, ctx, colour):
    res = _run(handler, ctx, _load(DEMO / "test0.jpg"), size="1-inch", background=colour, format="png")
    rgb = np.asarray(_png(res).convert("RGB")).astype(int)
    want = np.array(COLOURS.get(colour) or tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)))
    h = rgb.shape[0]
    # Top row and the upper third of both side columns are background in any compliant
    # photo (shoulders may reach the bottom and lower sides).
    border = np.concatenate([rgb[0], rgb[: h // 3, 0], rgb[: h // 3, -1]])
    assert np.abs(border - want).max() == 0
    # JPEG output keeps it within a few levels (4:4:4 chroma).
    jpg = _run(handler, ctx, _load(DEMO / "test0.jpg"), size="1-inch", background=colour)
    rgb = np.asarray(_png(jpg).convert("RGB")).astype(int)
    assert np.abs(rgb[0] - want).max() <= 4


def _measure(photo: np.ndarray, bg: tuple[int, int, int], detector) -> tuple[float, float]:
    """Head top margin and head height (crown to chin) as fractions of photo height,
    re-measured on the output: crown = first row whose central pixels leave the flat
    background, chin = bottom of the face box found by the detector on the output."""
    h, w = photo.shape[:2]
    diff = np.abs(photo.astype(int) - np.array(bg)).max(axis=2)
    central = diff[:, w // 3: 2 * w // 3] > 40
    crown = int(np.argmax(central.mean(axis=1) > 0.05))
    faces = detector.detect(photo)
    face = max(faces, key=lambda f: f.w * f.h)
    chin = face.y + face.h
    return crown / h, (chin - crown) / h


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["1-inch", "2-inch", "schengen", "us-passport"])
def test_head_geometry_within_tolerance_on_real_portraits(handler, ctx, preset):
    p = PRESETS[preset]
    detector = handler._detector
    for path in PORTRAITS:
        res = _run(handler, ctx, _load(path), size=preset, background="blue", format="png")
        photo = np.asarray(_png(res).convert("RGB"))
        top, head = _measure(photo, COLOURS["blue"], detector)
        assert abs(top - p.top_ratio) <= p.top_tol, (path.name, top)
        assert abs(head - p.head_ratio) <= p.head_tol, (path.name, head)
        assert abs(res.facts["roll_deg"]) < 30


def test_group_photo_rejected_more_than_one_face(handler, ctx):
    with pytest.raises(InputRejected) as exc:
        _run(handler, ctx, _load(DATA / "faces-pascal" / "2008_002470.jpg"))
    assert exc.value.code == "idphoto.multiple_faces"
    assert "more than one face" in exc.value.message.lower()


def test_landscape_without_people_rejected_no_face(handler, ctx):
    """A synthetic landscape (sky-to-grass gradient with texture): no person anywhere."""
    rng = np.random.default_rng(4)
    h, w = 480, 720
    y = np.linspace(0, 1, h)[:, None, None]
    sky, grass = np.array([120, 170, 235]), np.array([60, 120, 40])
    rgb = (sky * (1 - y) + grass * y) * np.ones((1, w, 1))
    rgb += rng.normal(0, 8, rgb.shape)
    with pytest.raises(InputRejected) as exc:
        _run(handler, ctx, _from_rgb(np.clip(rgb, 0, 255).astype(np.uint8)))
    assert exc.value.code == "idphoto.no_face"


def test_tiny_face_rejected_face_too_small(handler, ctx):
    src = Image.open(DEMO / "test1.jpg").convert("RGB")
    small = src.resize((src.width // 5, src.height // 5), Image.Resampling.LANCZOS)
    with pytest.raises(InputRejected) as exc:
        _run(handler, ctx, _from_rgb(np.asarray(small)), size="2-inch")
    assert exc.value.code == "idphoto.face_too_small"
    # The same portrait at full size is accepted: the rejection is about size alone.
    assert _run(handler, ctx, _load(DEMO / "test1.jpg"), size="2-inch").outputs


def test_kb_cap_is_met(handler, ctx):
    image = _load(DEMO / "test4.jpg")
    full = _run(handler, ctx, image, size="us-passport", background="white")
    res = _run(handler, ctx, image, size="us-passport", background="white", max_kb=20)
    assert len(full.outputs[0].data) > 20 * 1024  # the cap really had to work
    assert len(res.outputs[0].data) <= 20 * 1024
    assert _png(res).size == (600, 600)


def test_print_sheet_is_a_second_output(handler, ctx):
    res = _run(handler, ctx, _load(DEMO / "test3.jpg"), size="1-inch", background="red", sheet=True)
    assert [o.suffix for o in res.outputs] == ["", "-sheet"]
    sheet = Image.open(io.BytesIO(res.outputs[1].data))
    assert sheet.size in ((1795, 1205), (1205, 1795))
    assert tuple(round(d) for d in sheet.info["dpi"]) == (300, 300)
    assert res.facts["sheet_copies"] >= 8  # 1-inch: 5 x 2 on a 6-inch sheet


def test_facts_hold_numbers_not_pixels(handler, ctx):
    res = _run(handler, ctx, _load(DEMO / "test2.jpg"))
    for v in res.facts.values():
        assert isinstance(v, (int, float, str, list))
    assert {m.name for m in res.models} >= {"yunet-onnx", "u2netp", "mediapipe-selfie-segmentation",
                                            "dlib-shape-predictor-5"}


def _pil_to_image(im: Image.Image):
    return _from_rgb(np.asarray(im.convert("RGB")))


def test_face_at_edge_rejected(handler, ctx):
    """The same portrait cut just left of the face: no room to centre it."""
    src = Image.open(DEMO / "test2.jpg")
    with pytest.raises(InputRejected) as exc:
        _run(handler, ctx, _pil_to_image(src.crop((int(src.width * 0.45), 0, src.width, src.height))))
    assert exc.value.code == "idphoto.face_at_edge"


@pytest.mark.slow
def test_tilted_head_is_straightened_and_too_tilted_is_rejected(handler, ctx):
    src = Image.open(DEMO / "test2.jpg").convert("RGB")
    tilted = src.rotate(15, expand=True, fillcolor=(128, 128, 128))
    res = _run(handler, ctx, _pil_to_image(tilted), size="2-inch", format="png")
    assert abs(res.facts["roll_deg"]) > 10  # it did see the tilt...
    photo = np.asarray(_png(res).convert("RGB"))
    face = max(handler._detector.detect(photo), key=lambda f: f.w * f.h)
    eyes = handler._landmarks.locate(photo, face)
    dx, dy = np.subtract(eyes.right_eye, eyes.left_eye)
    assert abs(np.degrees(np.arctan2(dy, dx))) < 3  # ...and levelled the eyes
    with pytest.raises(InputRejected) as exc:
        _run(handler, ctx, _pil_to_image(src.rotate(40, expand=True, fillcolor=(128, 128, 128))))
    assert exc.value.code == "idphoto.head_turned"
