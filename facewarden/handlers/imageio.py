"""Safe decoding of untrusted image bytes, and metadata-free encoding of results.

Decoding is where hostile input is met first, so every way it can go wrong maps to one
reason code: empty, not an image, unsupported format, truncated, too large (checked from
the header, before any pixel is decompressed), too small, several frames.

Phones write HEIC (HEIF with HEVC) and newer cameras AVIF: Pillow reads and writes AVIF
itself, and ``pillow-heif`` adds HEIF, registered only when a file's ``ftyp`` box names a
HEIF brand (the import costs ~0.1 s that JPEG-only runs need not pay). A result keeps the
input's format when this machine can encode it, else it is written as JPEG and the
conversion is one of the image's notes (which go into the audit record).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facewarden.errors import InputRejected

# Pillow's own bomb guard is a warning below 2x its limit; ours is an explicit check
# against the configured budget, so switch Pillow's off and never load partial files.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

SUPPORTED_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp",
                     "HEIF": ".heic", "AVIF": ".avif"}
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                 "TIFF": "image/tiff", "BMP": "image/bmp", "HEIF": "image/heic", "AVIF": "image/avif"}
#: Formats whose results may carry an alpha channel.
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF", "HEIF", "AVIF")
#: ``ftyp`` brands of HEIF files (ISO/IEC 23008-12); AVIF's ("avif", "avis") Pillow reads itself.
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MIN_SIDE = 16


@dataclass(slots=True)
class DecodedImage:
    """An input image, oriented upright, as RGB uint8 pixels plus what is needed to write
    the result back in the same format."""

    rgb: np.ndarray  # (H, W, 3) uint8, C-contiguous
    format: str  # Pillow format name results are written in: the input's, or "JPEG" (see notes)
    alpha: np.ndarray | None = None  # (H, W) uint8 when the input had transparency
    icc_profile: bytes | None = None  # colour profile; kept, it identifies no one
    notes: tuple[str, ...] = ()  # conversions done, for the audit record

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def extension(self) -> str:
        return SUPPORTED_FORMATS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
           min_side: int = DEFAULT_MIN_SIDE) -> DecodedImage:
    if not data:
        raise InputRejected("input.empty", "the file is empty (0 bytes)")
    if _is_heif(data):
        _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InputRejected("input.not_an_image", "the file is not an image any supported decoder recognises") from exc
    except Exception as exc:
        raise InputRejected("input.corrupt", f"the image header is unreadable ({type(exc).__name__})") from exc
    fmt = im.format or ""
    if fmt == "MPO":  # multi-picture JPEG from phones: the first frame is the photo
        fmt = "JPEG"
    if fmt not in SUPPORTED_FORMATS:
        raise InputRejected("input.unsupported_format",
                            f"{fmt or 'this'} images are not supported; use JPEG, PNG, WebP, TIFF, BMP, "
                            "HEIC or AVIF")
    width, height = im.size
    if width * height > max_pixels:
        raise InputRejected(
            "input.too_large",
            f"the image is {width}×{height} px ({width * height / 1e6:.0f} MP), above the limit of "
            f"{max_pixels / 1e6:.0f} MP (a decompression bomb or an oversized scan)",
        )
    if min(width, height) < min_side:
        raise InputRejected("input.too_small",
                            f"the image is {width}×{height} px; under {min_side} px on a side it cannot be "
                            "checked for faces")
    if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":
        raise InputRejected("input.multi_frame",
                            "the image has several frames; only single-frame images can be guaranteed anonymized")
    try:
        im.load()
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg or "unrecognized data stream" in msg:
            raise InputRejected("input.truncated", "the image data ends early (truncated file)") from exc
        raise InputRejected("input.corrupt", f"the image data is corrupt ({msg[:80]})") from exc
    notes: list[str] = []
    alpha = None
    mode = im.mode
    out_fmt = fmt
    if not can_write(fmt):
        out_fmt = "JPEG"
        notes.append(f"{fmt} input; result written as JPEG (no {fmt} encoder on this machine)")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16)
        shift = 8 if arr.max(initial=0) > 255 else 0
        gray = (arr >> shift).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(gray, "L")
        notes.append(f"converted {mode} to 8-bit")
    if mode == "CMYK":
        notes.append("converted CMYK to RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        alpha = np.ascontiguousarray(np.asarray(im)[:, :, 3])
    rgb_im = im.convert("RGB")
    rgb = np.ascontiguousarray(np.asarray(rgb_im, dtype=np.uint8))
    if fmt == "JPEG" and mode == "CMYK":
        icc = None  # a CMYK profile no longer describes the RGB pixels
    if out_fmt not in ALPHA_FORMATS:
        alpha = None
    return DecodedImage(rgb=rgb, format=out_fmt, alpha=alpha, icc_profile=icc, notes=tuple(notes))


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


@cache
def _register_heif() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()


@cache
def can_write(fmt: str) -> bool:
    """Whether results can be encoded in ``fmt`` here (HEIF/AVIF need an encoder in the
    installed codec libraries): one tiny trial encode per format and process."""
    if fmt not in ("HEIF", "AVIF"):
        return fmt in SUPPORTED_FORMATS
    if fmt == "HEIF":
        _register_heif()
    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), fmt, quality=50)
    except Exception:  # noqa: BLE001 - any failure means "cannot write it"
        return False
    return True


def encode(rgb: np.ndarray, like: DecodedImage, *, jpeg_quality: int = 92) -> bytes:
    """Encodes pixels in the input's format with no EXIF, XMP, IPTC, text chunks or
    thumbnail: Pillow writes only what is passed here, and nothing else is passed."""
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    if like.alpha is not None and like.format in ALPHA_FORMATS:
        im.putalpha(Image.fromarray(like.alpha, "L"))
    out = io.BytesIO()
    kwargs: dict = {}
    if like.icc_profile:
        kwargs["icc_profile"] = like.icc_profile
    if like.format == "JPEG":
        im.save(out, "JPEG", quality=jpeg_quality, optimize=True, **kwargs)
    elif like.format == "PNG":
        im.save(out, "PNG", optimize=False, compress_level=6, **kwargs)
    elif like.format == "WEBP":
        im.save(out, "WEBP", quality=jpeg_quality, **kwargs)
    elif like.format == "TIFF":
        im.save(out, "TIFF", compression="tiff_deflate", **kwargs)
    elif like.format in ("HEIF", "AVIF"):
        if like.format == "HEIF":
            _register_heif()
        im.save(out, like.format, quality=jpeg_quality, **kwargs)
    else:
        im.save(out, like.format)
    return out.getvalue()
