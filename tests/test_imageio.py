"""Decoding of untrusted image bytes (one reason code per way it goes wrong) and
metadata-free encoding of results."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from facewarden.errors import InputRejected
from facewarden.handlers.imageio import decode, encode

XMP_NS = b"http://ns.adobe.com/xap"


# -- helpers -----------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes] | None = None,
         zero_row_bytes: int | None = None) -> bytes:
    """A hand-made PNG. With ``zero_row_bytes`` the image is ``height`` rows of zeros,
    streamed through zlib so a huge image costs only a few hundred KB on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    comp = zlib.compressobj(9)
    parts = []
    if zero_row_bytes is not None:
        row = b"\x00" * (1 + zero_row_bytes)
        parts = [comp.compress(row) for _ in range(height)]
    else:
        assert rows is not None
        parts = [comp.compress(b"\x00" + r) for r in rows]
    idat = b"".join(parts) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _jpeg(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _png_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises(InputRejected) as exc:
        decode(data, **kwargs)
    assert exc.value.message and exc.value.message != exc.value.code  # a sentence for people
    return exc.value.code


@pytest.fixture(scope="module")
def photo_bytes(face_photo: Path) -> bytes:
    return face_photo.read_bytes()


@pytest.fixture(scope="module")
def exif_photo(data_dir: Path) -> bytes:
    """A real camera photo carrying EXIF and XMP."""
    path = data_dir / "identities-knn" / "train" / "biden" / "biden.jpg"
    data = path.read_bytes()
    assert b"Exif" in data and XMP_NS in data, "the fixture photo should carry EXIF and XMP"
    return data


# -- rejections --------------------------------------------------------------------------
def test_zero_bytes_is_empty():
    assert _code(b"") == "input.empty"


def test_truncated_jpeg(photo_bytes: bytes):
    assert _code(photo_bytes[: len(photo_bytes) // 2]) == "input.truncated"


def test_text_file_named_jpg(tmp: Path):
    path = tmp / "holiday.jpg"
    path.write_text("this is not a photo, just some text that pretends to be one\n" * 20)
    assert _code(path.read_bytes()) == "input.not_an_image"


@pytest.mark.slow
def test_png_decompression_bomb_is_rejected_from_the_header(tmp: Path):
    side = 30000
    bomb = _png(side, side, 1, 0, zero_row_bytes=side // 8)  # 1-bit gray: 900 MP once decoded
    assert len(bomb) < 1_000_000
    assert _code(bomb) == "input.too_large"

    # Rejected before any big allocation: run decode in a process whose address space
    # cannot grow by more than 300 MB (the decoded image would need 900 MB). The control
    # run (limit lifted) shows that the memory cap really bites when pixels are decoded.
    path = tmp / "bomb.png"
    path.write_bytes(bomb)
    script = textwrap.dedent(f"""
        import resource, sys
        from facewarden.errors import InputRejected
        from facewarden.handlers.imageio import decode
        data = open({str(path)!r}, "rb").read()
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
        limit = vm * 1024 + 300 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        max_pixels = int(sys.argv[1])
        try:
            decode(data, max_pixels=max_pixels)
            print("decoded")
        except InputRejected as e:
            print(e.code)
        except MemoryError:
            print("MemoryError")
    """)
    run = [sys.executable, "-c", script]
    guarded = subprocess.run([*run, "100000000"], capture_output=True, text=True, timeout=60,
                             env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert guarded.stdout.strip() == "input.too_large", guarded.stderr[-2000:]
    control = subprocess.run([*run, str(10**10)], capture_output=True, text=True, timeout=60,
                             env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert control.stdout.strip() == "MemoryError", (control.stdout, control.stderr[-2000:])


def test_one_pixel_image_is_too_small():
    assert _code(_png_bytes(Image.new("RGB", (1, 1), (200, 10, 10)))) == "input.too_small"


# -- conversions that must succeed -------------------------------------------------------
def test_cmyk_jpeg_becomes_rgb(photo_bytes: bytes):
    rgb_in = Image.open(io.BytesIO(photo_bytes)).convert("RGB")
    data = _jpeg(rgb_in.convert("CMYK"), quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode(data)
    assert img.format == "JPEG"
    assert img.rgb.shape == (rgb_in.height, rgb_in.width, 3) and img.rgb.dtype == np.uint8
    assert any("CMYK" in n for n in img.notes)
    # The colours survive the round trip (not inverted, not channel-swapped).
    diff = np.abs(img.rgb.astype(int) - np.asarray(rgb_in, dtype=int)).mean()
    assert diff < 12, diff
    out = Image.open(io.BytesIO(encode(img.rgb, img)))
    assert out.mode == "RGB" and out.format == "JPEG"


def test_16bit_grayscale_png():
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    data = _png_bytes(Image.fromarray(ramp))  # uint16 -> mode I;16
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode(data)
    assert img.rgb.shape == (48, 64, 3)
    expected = (ramp >> 8).astype(np.uint8)
    assert np.abs(img.rgb[:, :, 0].astype(int) - expected).max() <= 1
    assert (img.rgb[:, :, 0] == img.rgb[:, :, 2]).all()
    assert Image.open(io.BytesIO(encode(img.rgb, img))).size == (64, 48)


def test_16bit_rgb_png():
    # Pillow cannot write 16-bit RGB, so this PNG is hand-made (colour type 2, depth 16).
    w, h = 40, 30
    px = np.zeros((h, w, 3), dtype=">u2")
    px[:, :, 0] = 0xFFFF  # red full
    px[:, :, 1] = 0x8000  # green half
    px[:, :, 2] = np.linspace(0, 0xFFFF, w, dtype=np.uint16)[None, :]
    data = _png(w, h, 16, 2, rows=[px[y].tobytes() for y in range(h)])
    img = decode(data)
    assert img.rgb.shape == (h, w, 3) and img.rgb.dtype == np.uint8
    assert (img.rgb[:, :, 0] == 255).all()
    assert (np.abs(img.rgb[:, :, 1].astype(int) - 128) <= 1).all()
    assert img.rgb[0, 0, 2] == 0 and img.rgb[0, -1, 2] == 255


def test_rgba_png_keeps_alpha_through_encode():
    w, h = 50, 40
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[:, :, 1] = 180
    arr[:, :, 3] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img = decode(_png_bytes(Image.fromarray(arr, "RGBA")))
    assert img.alpha is not None and (img.alpha == arr[:, :, 3]).all()
    out = Image.open(io.BytesIO(encode(img.rgb, img)))
    assert out.mode == "RGBA"
    assert (np.asarray(out)[:, :, 3] == arr[:, :, 3]).all()


def test_exif_orientation_is_applied():
    # Stored 40 wide × 20 high: left half red, right half blue. Orientation 6 means
    # "rotate 90° clockwise to display": upright it is 20 wide × 40 high, red on top.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode(_jpeg(Image.fromarray(arr), exif=exif.tobytes(), quality=95))
    assert (img.width, img.height) == (20, 40)
    top, bottom = img.rgb[:15].reshape(-1, 3).mean(0), img.rgb[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


# -- encode strips metadata --------------------------------------------------------------
def _assert_clean(data: bytes) -> None:
    out = Image.open(io.BytesIO(data))
    assert not out.getexif(), dict(out.getexif())
    assert b"Exif" not in data
    assert XMP_NS not in data
    assert "xmp" not in out.info and "XML:com.adobe.xmp" not in out.info


def test_encode_drops_exif_and_xmp_of_a_real_camera_photo(exif_photo: bytes):
    img = decode(exif_photo)
    out = encode(img.rgb, img)
    _assert_clean(out)
    assert Image.open(io.BytesIO(out)).size == (img.width, img.height)


def test_encode_drops_gps_exif_thumbnail_and_xmp():
    arr = np.full((64, 96, 3), 120, dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0112] = 1
    gps = exif.get_ifd(0x8825)
    gps[2] = (52.0, 22.0, 1.0)  # GPSLatitude
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
           b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="cam"/>'
           b'</rdf:RDF></x:xmpmeta>')
    data = _jpeg(Image.fromarray(arr), exif=exif.tobytes(), xmp=xmp)
    assert b"Exif" in data and XMP_NS in data
    img = decode(data)
    _assert_clean(encode(img.rgb, img))


def test_encode_png_drops_text_and_exif_chunks():
    info = PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/' xmp='http://ns.adobe.com/xap/1.0/'/>")
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    data = _png_bytes(Image.new("RGB", (32, 32), (1, 2, 3)), pnginfo=info, exif=exif.tobytes())
    img = decode(data)
    out = encode(img.rgb, img)
    _assert_clean(out)
    for marker in (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"Jane Doe"):
        assert marker not in out, marker
