"""HEIC/HEIF (phones) and AVIF inputs, made at test time from the shared PASCAL photos:
decoded upright, metadata gone, bomb budget checked from the header, results kept in the
input's format (or JPEG, said in the notes, where no encoder exists)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facewarden.config.paths import default_models_dir
from facewarden.errors import InputRejected
from facewarden.handlers import imageio
from facewarden.handlers.anonymize import AnonymizeHandler
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.imageio import decode, encode

REPO = Path(__file__).resolve().parents[1]
PASCAL = REPO.parent / "shared" / "data" / "faces-pascal"
PHOTO = "2008_001322.jpg"
FORMATS = {"HEIF": b"heic", "AVIF": b"avif"}


def _boxes(name: str) -> list[tuple[int, int, int, int]]:
    for xml in ("testing.xml", "training.xml"):
        for im in ET.parse(PASCAL / xml).getroot().iter("image"):
            if im.get("file") == name:
                return [(int(b.get("left")), int(b.get("top")), int(b.get("width")), int(b.get("height")))
                        for b in im.findall("box")]
    raise KeyError(name)


def _source() -> np.ndarray:
    return np.asarray(Image.open(PASCAL / PHOTO).convert("RGB"))


def _encode_with_exif(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    """A phone-like file: EXIF orientation, GPS position and camera make."""
    if fmt == "HEIF":
        imageio._register_heif()
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 24.0), "E", (2.0, 21.0, 3.0)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=92, exif=exif.tobytes())
    return buf.getvalue()


def _no_metadata(data: bytes) -> None:
    im = Image.open(io.BytesIO(data))
    assert not im.getexif(), "EXIF survived"
    assert not im.info.get("exif") and not im.info.get("xmp"), "EXIF/XMP block survived"
    for marker in (b"PhoneMaker", b"GPS"):
        assert marker not in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_decoded_upright_with_format_kept(fmt: str) -> None:
    src = _source()
    data = _encode_with_exif(src, fmt, orientation=6)  # stored sideways: rotate 90° clockwise
    assert data[4:12] == b"ftyp" + FORMATS[fmt]
    image = decode(data)
    assert image.format == fmt and image.extension in (".heic", ".avif")
    upright = np.rot90(src, k=-1)
    assert image.rgb.shape == upright.shape
    assert np.abs(image.rgb.astype(int) - upright).mean() < 6  # lossy codec noise only
    assert np.abs(image.rgb.astype(int) - np.rot90(src, k=1)).mean() > 20  # and not the wrong way


@pytest.mark.parametrize("fmt", FORMATS)
def test_anonymized_result_keeps_the_format_and_drops_exif_and_gps(fmt: str) -> None:
    src = _source()
    data = _encode_with_exif(src, fmt, orientation=6)
    h = AnonymizeHandler()
    image = decode(data)
    res = h.run(image, h.validate_params({}), HandlerContext(models_dir=default_models_dir()))
    out = res.outputs[0]
    assert out.data[4:12] == b"ftyp" + FORMATS[fmt]
    assert out.extension == image.extension and out.content_type in ("image/heic", "image/avif")
    _no_metadata(out.data)
    result = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")).astype(int)
    assert result.shape == image.rgb.shape  # upright, as decoded
    height = src.shape[0]
    for x, y, w, bh in _boxes(PHOTO):  # the same faces, rotated 90° clockwise with the photo
        rx, ry, rw, rh = height - (y + bh), x, bh, w
        cx0, cy0, cx1, cy1 = rx + rw // 4, ry + rh // 4, rx + 3 * rw // 4, ry + 3 * rh // 4
        diff = np.abs(result[cy0:cy1, cx0:cx1] - image.rgb[cy0:cy1, cx0:cx1]).mean()
        assert diff > 6.0, f"face at {(rx, ry, rw, rh)} barely changed ({diff:.1f})"


@pytest.mark.parametrize("fmt", FORMATS)
def test_pixel_budget_is_checked_from_the_header(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode_with_exif(_source(), fmt, orientation=1)
    loaded: list[str] = []
    real_load = Image.Image.load

    def spy(self):  # records any pixel decoding (ImageFile.load overrides Image.load)
        loaded.append(self.format)
        return real_load(self)

    monkeypatch.setattr(type(Image.open(io.BytesIO(data))), "load", spy)
    with pytest.raises(InputRejected) as err:
        decode(data, max_pixels=100_000)
    assert err.value.code == "input.too_large"
    assert loaded == []


def test_without_an_encoder_the_result_is_jpeg_and_the_notes_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mock: every machine here has a HEVC encoder, so "none installed" is simulated by
    # replacing the capability probe; decoding and encoding stay real.
    data = _encode_with_exif(_source(), "HEIF", orientation=1)
    monkeypatch.setattr(imageio, "can_write", lambda fmt: fmt != "HEIF")
    image = decode(data)
    assert image.format == "JPEG" and image.extension == ".jpg"
    assert any("HEIF input; result written as JPEG" in n for n in image.notes)
    out = encode(image.rgb, image)
    assert out[:3] == b"\xff\xd8\xff"
    _no_metadata(out)


def test_can_write_probes_the_real_codecs() -> None:
    assert imageio.can_write("HEIF") and imageio.can_write("AVIF") and imageio.can_write("JPEG")
    assert not imageio.can_write("GIF")


def test_heic_through_the_cli_pipeline_keeps_heic_with_an_audit_record(tmp_path: Path, models_dir: Path) -> None:
    src = tmp_path / "in" / "IMG_0001.HEIC"
    src.parent.mkdir()
    src.write_bytes(_encode_with_exif(_source(), "HEIF", orientation=6))
    out = tmp_path / "out"
    proc = subprocess.run([str(Path(sys.executable).with_name("facewarden")), "process", str(src), "--out", str(out),
                           "--state", str(tmp_path / "state"), "--models-dir", str(models_dir)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = out / "IMG_0001.HEIC"  # the input's name and extension kept
    data = result.read_bytes()
    assert data[4:12] == b"ftypheic"
    _no_metadata(data)
    record = json.loads((out / "IMG_0001.HEIC.audit.json").read_text())
    assert record["outputs"][0]["content_type"] == "image/heic"
    assert record["outputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()
