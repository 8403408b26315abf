"""The anonymize handler and ``obscure_faces`` on real photos with real detectors.

The only test doubles are detectors that raise or return garbage: they stand in for a
native runtime crash or a corrupt model, which cannot be provoked on purpose. Everything
else (YuNet, MediaPipe, decode/encode) is the real thing.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facewarden.config import default_models_dir
from facewarden.errors import InputRejected, ProcessingFailed
from facewarden.handlers import base
from facewarden.handlers.anonymize import AnonymizeHandler, face_mask, obscure_faces
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.imageio import decode
from facewarden.models.protocols import Face

REPO = Path(__file__).resolve().parents[1]
PASCAL = REPO.parent / "shared" / "data" / "faces-pascal"
CTX = HandlerContext(models_dir=default_models_dir())


def _gt(name: str) -> list[tuple[int, int, int, int]]:
    for xml in ("testing.xml", "training.xml"):
        for im in ET.parse(PASCAL / xml).getroot().iter("image"):
            if im.get("file") == name:
                return [(int(b.get("left")), int(b.get("top")), int(b.get("width")), int(b.get("height")))
                        for b in im.findall("box")]
    raise KeyError(name)


def _run(data: bytes, **params):
    # A fresh handler, not the registry's: the registry imports every handler module, and an
    # unrelated one being broken must not fail these tests (one test below covers the registry).
    h = AnonymizeHandler()
    p = h.validate_params(params)
    image = decode(data)
    return image, h.run(image, p, CTX)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in PASCAL.glob("*.jpg")))
def test_faces_are_obscured_and_the_rest_is_left_alone(name):
    data = (PASCAL / name).read_bytes()
    image, res = _run(data)
    assert len(res.outputs) == 1
    out = np.asarray(Image.open(io.BytesIO(res.outputs[0].data)).convert("RGB")).astype(np.int16)
    src = image.rgb.astype(np.int16)
    boxes = _gt(name)
    inside = np.zeros(src.shape[:2], bool)
    for x, y, w, h in boxes:
        # Each face changes a lot (blur, not JPEG noise), measured on its central part.
        cx0, cy0, cx1, cy1 = x + w // 4, y + h // 4, x + 3 * w // 4, y + 3 * h // 4
        diff = np.abs(out[cy0:cy1, cx0:cx1] - src[cy0:cy1, cx0:cx1]).mean()
        assert diff > 6.0, f"face at {(x, y, w, h)} barely changed ({diff:.1f})"
        inside[max(0, y - h):y + 2 * h, max(0, x - w):x + 2 * w] = True
    # Far from any face the picture is the input again, up to JPEG re-encoding noise and a
    # few blurred false positives: the default finder looks at these small photos at 2x
    # with a low threshold (a missed face is a leak, a blurred patch of wall is not), and
    # finds printed faces, faces in pictures and some texture there.
    far = np.abs(out - src).mean(axis=2)[~inside]
    changed = float((far > 10).mean())
    assert changed < 0.1, f"{changed:.3f} of the picture far from faces changed"  # max 0.078
    assert res.facts["faces"] >= len(boxes)
    assert res.facts["boxes_obscured"] == res.facts["faces"]
    assert res.facts["detector"] == "auto"
    assert {m.name for m in res.models} == {"yunet-onnx", "centerface-dynamic", "mediapipe-face-full-range"}


def _exif_jpeg() -> bytes:
    """A real photo stored on its side with EXIF orientation 6, GPS, a maker string, XMP and
    an embedded thumbnail (a copy of the un-blurred faces)."""
    im = Image.open(PASCAL / "2008_002506.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW to display
    exif[0x010F] = "FaceCam"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    thumb = io.BytesIO()
    im.resize((80, 120)).save(thumb, "JPEG")
    raw = exif.tobytes()  # b"Exif\0\0" + TIFF
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=raw, xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret</x:xmpmeta>")
    data = buf.getvalue()
    # Pillow writes no IFD1 thumbnail, so add one by hand: a second JPEG inside APP1.
    at = data.index(raw)
    assert data[at - 4:at - 2] == b"\xff\xe1"
    payload = b"Exif\x00\x00" + _add_thumbnail(raw[6:], thumb.getvalue())
    return data[:at - 2] + (len(payload) + 2).to_bytes(2, "big") + payload + data[at + len(raw):]


def _add_thumbnail(tiff: bytes, jpeg: bytes) -> bytes:
    """Appends IFD1 (JPEGInterchangeFormat + length) to a TIFF block and links it from IFD0."""
    bo = "little" if tiff[:2] == b"II" else "big"

    def u16(v: int) -> bytes:
        return v.to_bytes(2, bo)

    def u32(v: int) -> bytes:
        return v.to_bytes(4, bo)

    ifd0 = int.from_bytes(tiff[4:8], bo)
    n = int.from_bytes(tiff[ifd0:ifd0 + 2], bo)
    next_ptr = ifd0 + 2 + 12 * n
    body = bytearray(tiff)
    ifd1 = len(body)
    thumb_at = ifd1 + 2 + 2 * 12 + 4
    entries = u16(2) + u16(0x0201) + u16(4) + u32(1) + u32(thumb_at)
    entries += u16(0x0202) + u16(4) + u32(1) + u32(len(jpeg)) + u32(0)
    body[next_ptr:next_ptr + 4] = u32(ifd1)
    return bytes(body) + entries + jpeg


def test_exif_thumbnail_gps_and_xmp_are_gone_and_orientation_applied():
    data = _exif_jpeg()
    src = Image.open(io.BytesIO(data))
    assert src.getexif()[0x0112] == 6 and data.count(b"\xff\xd8\xff") == 2  # the thumbnail is there
    assert src.getexif().get_ifd(0x8825)[1] == "N"
    stored_w, stored_h = src.size
    _, res = _run(data, jpeg_quality=85)
    out_bytes = res.outputs[0].data
    out = Image.open(io.BytesIO(out_bytes))
    assert out.format == "JPEG"
    assert (out.width, out.height) == (stored_h, stored_w)  # upright: orientation was applied
    assert len(out.getexif()) == 0
    assert b"Exif" not in out_bytes and b"xmpmeta" not in out_bytes and b"FaceCam" not in out_bytes
    assert out_bytes.count(b"\xff\xd8\xff") == 1  # no embedded thumbnail JPEG
    assert res.outputs[0].extension == ".jpg" and res.outputs[0].content_type == "image/jpeg"
    assert res.facts["faces"] >= 3  # the faces were found in the upright picture


def test_png_stays_png_with_alpha():
    im = Image.open(PASCAL / "2008_004176.jpg").convert("RGBA")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    _, res = _run(buf.getvalue(), mode="pixelate", shape="box")
    out = res.outputs[0]
    assert out.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out.extension, out.content_type) == (".png", "image/png")
    assert Image.open(io.BytesIO(out.data)).mode == "RGBA"
    assert res.facts["faces"] >= 7


class _Raising:
    """Test double for a detector runtime that crashes mid-job (not provokable for real)."""

    name = "raising"

    def __init__(self, exc: Exception):
        self.exc = exc

    def detect(self, rgb):
        raise self.exc

    def model_ids(self):
        return []


class _Garbage(_Raising):
    """Test double for a detector that returns something that is not a list of faces."""

    def detect(self, rgb):
        return [(1, 2, 3, 4)]


@pytest.mark.parametrize("det", [_Raising(RuntimeError("segfault-ish")),
                                 _Raising(ProcessingFailed("detector.error", "boom")),
                                 _Raising(MemoryError()), _Garbage(None)])
def test_detector_failure_fails_closed_with_no_output(det):
    h = AnonymizeHandler(detector_factory=lambda *a, **k: det)
    image = decode((PASCAL / "2008_004176.jpg").read_bytes())
    result = None
    with pytest.raises(ProcessingFailed) as err:
        result = h.run(image, h.validate_params({}), CTX)
    assert result is None
    assert err.value.code.startswith("detector.")


def test_detector_that_cannot_be_built_fails_closed():
    def broken(*a, **k):
        raise OSError("model file unreadable")

    h = AnonymizeHandler(detector_factory=broken)
    image = decode((PASCAL / "2008_004176.jpg").read_bytes())
    with pytest.raises(ProcessingFailed, match=r"detector\.unavailable"):
        h.run(image, h.validate_params({}), CTX)


def test_registered_under_its_name():
    h = base.get("anonymize")
    assert isinstance(h, AnonymizeHandler) and h.name == "anonymize"
    assert base.get("anonymize") is h  # one instance per process: models load once


def test_params_are_normalised_and_defaulted():
    h = AnonymizeHandler()
    d = h.validate_params({})
    assert set(d) == {"detector", "mode", "shape", "margin", "min_score", "fill", "jpeg_quality"}
    assert d["detector"] == "auto" and d["mode"] == "blur" and d["shape"] == "ellipse"
    assert h.validate_params({"fill": "#FF8000"})["fill"] == [255, 128, 0]
    assert h.validate_params({"fill": [255, 128, 0]}) == h.validate_params({"fill": "ff8000"})
    assert h.validate_params({"mode": "FILL", "margin": 0})["mode"] == "fill"
    assert h.validate_params(d) == d  # idempotent


@pytest.mark.parametrize("params", [
    {"blur": True}, {"detector": "haar"}, {"mode": "swirl"}, {"shape": "star"},
    {"margin": -0.1}, {"margin": "big"}, {"margin": float("nan")}, {"min_score": 0},
    {"min_score": 1.5}, {"fill": "#12345"}, {"fill": [0, 0, 256]}, {"fill": [0, 0]},
    {"jpeg_quality": 0}, {"jpeg_quality": 101}, {"jpeg_quality": 90.5}, {"jpeg_quality": True},
])
def test_bad_params_are_rejected(params):
    with pytest.raises(InputRejected) as err:
        AnonymizeHandler().validate_params(params)
    assert err.value.code == "params.invalid"


def test_obscure_faces_modes_and_mask():
    rgb = np.asarray(Image.open(PASCAL / "2008_002506.jpg").convert("RGB"))
    before = rgb.copy()
    faces = [Face(329, 78, 109, 109, 0.9), Face(224, 95, 91, 91, 0.9)]
    mask = face_mask(*rgb.shape[:2], faces, shape="ellipse", margin=0.2)
    filled = obscure_faces(rgb, faces, mode="fill", fill=(255, 0, 255), margin=0.2)
    assert np.array_equal(rgb, before)  # the input is never modified
    assert (filled[mask] == (255, 0, 255)).all()
    assert np.array_equal(filled[~mask], rgb[~mask])
    # The ellipse covers the face box (70% rule) and less than the grown box.
    x, y, w, h = 329, 78, 109, 109
    assert mask[y:y + h, x:x + w].mean() > 0.9
    box = face_mask(*rgb.shape[:2], faces, shape="box", margin=0.2)
    assert box.sum() > mask.sum()
    for mode in ("blur", "pixelate"):
        out = obscure_faces(rgb, faces, mode=mode)
        assert np.array_equal(out[~mask], rgb[~mask])
        inner = (slice(y + 20, y + h - 20), slice(x + 20, x + w - 20))
        assert np.abs(out[inner].astype(int) - rgb[inner]).mean() > 8
    # Faces partly outside the frame are clipped, not an error; no faces means a copy.
    edge = obscure_faces(rgb, [Face(-30, -30, 60, 60, 0.9)], mode="fill")
    assert (edge[0, 0] == 0).all()
    assert np.array_equal(obscure_faces(rgb, []), rgb)
    with pytest.raises(ValueError):
        obscure_faces(rgb, faces, mode="swirl")


def test_blur_grows_with_face_size():
    """A fixed kernel would leave a large face recognisable; ours scales with the face."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    small = obscure_faces(noise, [Face(50, 50, 40, 40, 1)], shape="box", margin=0)
    large = obscure_faces(noise, [Face(100, 100, 400, 400, 1)], shape="box", margin=0)
    # Residual texture (std of the blurred noise) is lower for the larger face.
    assert large[250:350, 250:350].std() < small[60:80, 60:80].std()
    assert large[250:350, 250:350].std() < 8
