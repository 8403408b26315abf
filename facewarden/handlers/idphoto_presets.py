"""ID photo size presets: one data table, cross-checked against
``../shared/data/idphoto-specs/demo/assets/size_list_EN.csv`` by tests/test_idphoto.py.

Head height is crown to chin as a fraction of photo height; top margin is the gap from
the photo's top edge to the crown, also as a fraction of height. Passport-type presets
follow their issuers' published ranges (US: head 1-1 3/8 in of 2 in; ICAO/Schengen:
head 32-36 mm of 45 mm; China passport: head 28-33 mm of 48 mm); the Chinese 1-/2-inch
family uses the common studio layout (head ~60 %, top gap 10-12 %, as HivisionIDPhotos).

HIVISION_SIZES is HivisionIDPhotos' own size list (``demo/assets/size_list_EN.csv``, 18
names with pixel sizes): each name resolves to the preset of ours with the same pixel size
(equal meaning, equal idempotency key) or, for the four sizes we had no preset for, to a
new one with the studio layout HivisionIDPhotos uses for all its sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from facewarden.errors import InputRejected


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    width_mm: float
    height_mm: float
    width_px: int
    height_px: int
    head_ratio: float  # target head height / photo height
    head_tol: float  # allowed +- on head_ratio
    top_ratio: float  # target crown-to-top-edge gap / photo height
    top_tol: float
    dpi: int = 300


# name, mm (w, h), px (w, h) at 300 dpi, head ratio ± tol, top margin ± tol
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("1-inch", 25, 35, 295, 413, 0.60, 0.06, 0.10, 0.03),
    Preset("small-1-inch", 22, 32, 260, 378, 0.60, 0.06, 0.10, 0.03),
    Preset("large-1-inch", 33, 48, 390, 567, 0.60, 0.06, 0.10, 0.03),
    Preset("2-inch", 35, 49, 413, 579, 0.60, 0.06, 0.10, 0.03),
    Preset("small-2-inch", 35, 45, 413, 531, 0.60, 0.06, 0.10, 0.03),
    Preset("large-2-inch", 35, 53, 413, 626, 0.58, 0.06, 0.10, 0.03),
    Preset("china-passport", 33, 48, 390, 567, 0.635, 0.05, 0.08, 0.02),
    Preset("us-passport", 50.8, 50.8, 600, 600, 0.59, 0.09, 0.10, 0.04),
    Preset("schengen", 35, 45, 413, 531, 0.755, 0.04, 0.07, 0.025),
]}
ALIASES = {
    "one-inch": "1-inch", "two-inch": "2-inch", "china-visa": "china-passport",
    "us-visa": "us-passport", "2x2": "us-passport", "uk": "schengen", "eu": "schengen",
    "uk-passport": "schengen", "eu-passport": "schengen", "35x45": "schengen",
}

#: HivisionIDPhotos' size list: its English name, width and height in px (300 dpi).
HIVISION_SIZES: tuple[tuple[str, int, int], ...] = (
    ("One inch", 295, 413),
    ("Two inches", 413, 626),
    ("Small one inch", 260, 378),
    ("Small two inches", 413, 531),
    ("Large one inch", 390, 567),
    ("Large two inches", 413, 626),
    ("Five inches", 1050, 1499),
    ("Teacher qualification certificate", 295, 413),
    ("National civil service exam", 295, 413),
    ("Primary accounting exam", 295, 413),
    ("English CET-4 and CET-6 exams", 144, 192),
    ("Computer level exam", 390, 567),
    ("Graduate entrance exam", 531, 709),
    ("Social security card", 358, 441),
    ("Electronic driver's license", 260, 378),
    ("American visa", 600, 600),
    ("Japanese visa", 295, 413),
    ("Korean visa", 413, 531),
)
#: Studio layout (head ratio ± tol, top margin ± tol) for Hivision sizes new to us.
_STUDIO = (0.60, 0.06, 0.10, 0.03)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-").replace("'", "")


def _add_hivision_sizes() -> None:
    for name, w_px, h_px in HIVISION_SIZES:
        key = _key(name)
        same = next((p for p in PRESETS.values() if (p.width_px, p.height_px) == (w_px, h_px)), None)
        if same is None:
            same = Preset(key, round(w_px / 300 * 25.4, 1), round(h_px / 300 * 25.4, 1), w_px, h_px, *_STUDIO)
            PRESETS[key] = same
        elif key != same.name:
            ALIASES.setdefault(key, same.name)
    # size_list_EN.csv spells this one "National civil service exa" (cut short): accept both.
    ALIASES.setdefault("national-civil-service-exa", "1-inch")


_add_hivision_sizes()
#: Defaults for custom sizes: the ICAO-ish middle ground.
CUSTOM_HEAD, CUSTOM_HEAD_TOL, CUSTOM_TOP, CUSTOM_TOP_TOL = 0.62, 0.07, 0.10, 0.03
MAX_SIDE_PX = 4000


def resolve(size: str) -> Preset:
    """A preset by name or alias, ``w_mm,h_mm,dpi`` (e.g. ``35,45,300``) or pixels
    (``413x531``, assumed 300 dpi)."""
    key = _key(size)
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    m = re.fullmatch(r"(\d+(?:\.\d+)?),(\d+(?:\.\d+)?),(\d+)", key)
    if m:
        w_mm, h_mm, dpi = float(m[1]), float(m[2]), int(m[3])
        if not (72 <= dpi <= 1200):
            raise InputRejected("params.invalid", f"dpi {dpi} is outside 72-1200")
        w_px, h_px = round(w_mm / 25.4 * dpi), round(h_mm / 25.4 * dpi)
        return _custom(key, w_mm, h_mm, w_px, h_px, dpi)
    m = re.fullmatch(r"(\d+)[x,](\d+)(?:px)?", key)
    if m:
        w_px, h_px = int(m[1]), int(m[2])
        return _custom(f"{w_px}x{h_px}px", w_px / 300 * 25.4, h_px / 300 * 25.4, w_px, h_px, 300)
    raise InputRejected(
        "params.invalid",
        f"unknown size {size!r}; use one of {', '.join(PRESETS)}, 'width_mm,height_mm,dpi' or 'WIDTHxHEIGHT' pixels",
    )


def _custom(name: str, w_mm: float, h_mm: float, w_px: int, h_px: int, dpi: int) -> Preset:
    if not (64 <= w_px <= MAX_SIDE_PX and 64 <= h_px <= MAX_SIDE_PX):
        raise InputRejected("params.invalid", f"size {w_px}x{h_px} px is outside 64-{MAX_SIDE_PX} px a side")
    if not (0.6 <= h_px / w_px <= 2.0):
        raise InputRejected("params.invalid", f"size {w_px}x{h_px} px is not a portrait ID photo shape")
    return Preset(name, round(w_mm, 2), round(h_mm, 2), w_px, h_px, CUSTOM_HEAD, CUSTOM_HEAD_TOL,
                  CUSTOM_TOP, CUSTOM_TOP_TOL, dpi)


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "blue": (67, 142, 219),
    "white": (255, 255, 255),
}
#: ``background=transparent``: no colour, the person on an alpha channel (PNG only).
TRANSPARENT = "transparent"


def parse_colour(value: str) -> tuple[int, int, int]:
    key = str(value).strip().lower()
    if key in COLOURS:
        return COLOURS[key]
    m = re.fullmatch(r"#?([0-9a-f]{6})", key)
    if not m:
        raise InputRejected("params.invalid",
                            f"background {value!r} is not red, blue, white, transparent or #rrggbb")
    h = m[1]
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def parse_background(value: str) -> tuple[int, int, int] | None:
    """A colour, or None for a transparent background."""
    if str(value).strip().lower() in (TRANSPARENT, "none", "alpha"):
        return None
    return parse_colour(value)


def background_name(colour: tuple[int, int, int] | None) -> str:
    """The normalised parameter value: ``#rrggbb`` or ``transparent``."""
    return TRANSPARENT if colour is None else "#{:02x}{:02x}{:02x}".format(*colour)
