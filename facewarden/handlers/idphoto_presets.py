"""ID-photo size presets and background colours: one data table, so a new standard is one row.

Head geometry is given as fractions of the photo height, because standards state it in mm
(or inches) of a photo whose pixel size depends on the dpi:

- ``head``: crown (top of the hair) to chin; ``head_tol`` is the accepted deviation.
- ``top``: photo top edge to crown; ``top_tol`` likewise.

Sources: ICAO 9303 / Schengen / UK (35x45 mm, chin-to-crown 32-36 mm, UK 29-34 mm), US State
Department (2x2 in, head 1-1 3/8 in), China passport/visa (33x48 mm, head 28-33 mm, crown 3-5 mm
below the edge), and the common Chinese print sizes (head about 2/3 of the height minus
hair room). Pixel sizes agree with ``../shared/data/idphoto-specs/demo/assets/size_list_EN.csv``
(HivisionIDPhotos): One inch 295x413, Small one inch 260x378, Small two inches 413x531,
Large two inches 413x626, American visa 600x600, and its "Large one inch" 390x567 is our
China passport/visa. That table calls 413x626 "Two inches" too; the Chinese 2-inch standard
(GB/T: 35x49 mm) is 413x579, which is what ``2-inch`` means here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from facewarden.errors import InputRejected

MM_PER_INCH = 25.4
DEFAULT_DPI = 300


@dataclass(frozen=True, slots=True)
class SizePreset:
    name: str
    label: str
    width_mm: float
    height_mm: float
    width_px: int
    height_px: int
    dpi: int
    head: float
    head_tol: float
    top: float
    top_tol: float

    def as_facts(self) -> dict[str, Any]:
        return {"name": self.name, "mm": [self.width_mm, self.height_mm],
                "px": [self.width_px, self.height_px], "dpi": self.dpi}


def _p(name: str, label: str, wmm: float, hmm: float, wpx: int, hpx: int, head: float, head_tol: float,
       top: float, top_tol: float) -> SizePreset:
    return SizePreset(name, label, wmm, hmm, wpx, hpx, DEFAULT_DPI, head, head_tol, top, top_tol)


#: name -> preset. Head/top fractions for the Chinese print sizes follow the usual studio
#: rule (head ~60% of the height, crown ~8% below the top edge).
PRESETS: dict[str, SizePreset] = {p.name: p for p in [
    _p("1-inch", "1 inch (25x35 mm)", 25, 35, 295, 413, 0.60, 0.06, 0.08, 0.04),
    _p("small-1-inch", "small 1 inch (22x32 mm)", 22, 32, 260, 378, 0.60, 0.06, 0.08, 0.04),
    _p("2-inch", "2 inch (35x49 mm)", 35, 49, 413, 579, 0.60, 0.06, 0.08, 0.04),
    _p("small-2-inch", "small 2 inch (35x45 mm)", 35, 45, 413, 531, 0.60, 0.06, 0.08, 0.04),
    _p("large-2-inch", "large 2 inch (35x53 mm)", 35, 53, 413, 626, 0.58, 0.06, 0.08, 0.04),
    # 28-33 mm of 48 mm; crown 3-5 mm below the edge.
    _p("china-passport", "China passport/visa (33x48 mm)", 33, 48, 390, 567, 0.635, 0.05, 0.083, 0.021),
    # 1 to 1 3/8 in of 2 in; the eyes then fall 1 1/8 to 1 3/8 in above the bottom.
    _p("us-passport", "US passport/visa (2x2 in)", 50.8, 50.8, 600, 600, 0.60, 0.08, 0.10, 0.05),
    # 32-36 mm of 45 mm (UK accepts 29-34: the tolerance covers both).
    _p("schengen", "Schengen/UK/EU (35x45 mm)", 35, 45, 413, 531, 0.74, 0.05, 0.09, 0.04),
]}

ALIASES: dict[str, str] = {
    "1inch": "1-inch", "one-inch": "1-inch", "small-1inch": "small-1-inch", "2inch": "2-inch",
    "two-inch": "2-inch", "small-2inch": "small-2-inch", "large-2inch": "large-2-inch",
    "china-visa": "china-passport", "cn-passport": "china-passport", "us": "us-passport",
    "us-visa": "us-passport", "2x2": "us-passport", "uk": "schengen", "eu": "schengen",
    "icao": "schengen", "uk-passport": "schengen", "eu-passport": "schengen",
}

#: Custom sizes get the ICAO-like middle of the road: it fits the common portrait formats.
CUSTOM_HEAD = (0.62, 0.08)
CUSTOM_TOP = (0.09, 0.04)
MIN_SIDE_PX, MAX_SIDE_PX = 64, 4000

_CUSTOM_MM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+)\s*$")
_CUSTOM_PX = re.compile(r"^\s*(\d+)\s*[x,]\s*(\d+)\s*(?:px)?\s*$")


def _bad(msg: str) -> InputRejected:
    return InputRejected("params.invalid", msg)


def parse_size(value: Any) -> SizePreset:
    """A preset name (or alias), ``width_mm,height_mm,dpi``, or ``WIDTHxHEIGHT`` pixels (300 dpi)."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"size must be a preset name ({', '.join(PRESETS)}), 'width_mm,height_mm,dpi' "
                   "or 'WIDTHxHEIGHT' pixels")
    key = value.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    m = _CUSTOM_MM.match(value)
    if m:
        wmm, hmm, dpi = float(m.group(1)), float(m.group(2)), int(m.group(3))
        if not 72 <= dpi <= 1200:
            raise _bad("custom dpi must be within [72, 1200]")
        wpx, hpx = round(wmm / MM_PER_INCH * dpi), round(hmm / MM_PER_INCH * dpi)
        name = f"custom-{wmm:g}x{hmm:g}mm-{dpi}dpi"
    else:
        m = _CUSTOM_PX.match(value)
        if not m:
            raise _bad(f"unknown size {value!r}; use one of {', '.join(PRESETS)}, "
                       "'width_mm,height_mm,dpi' (e.g. 35,45,300) or 'WIDTHxHEIGHT' pixels (e.g. 413x531)")
        wpx, hpx, dpi = int(m.group(1)), int(m.group(2)), DEFAULT_DPI
        wmm, hmm = round(wpx / dpi * MM_PER_INCH, 1), round(hpx / dpi * MM_PER_INCH, 1)
        name = f"custom-{wpx}x{hpx}px"
    if not (MIN_SIDE_PX <= wpx <= MAX_SIDE_PX and MIN_SIDE_PX <= hpx <= MAX_SIDE_PX):
        raise _bad(f"custom size gives {wpx}x{hpx} px; each side must be within [{MIN_SIDE_PX}, {MAX_SIDE_PX}]")
    if not 0.5 <= hpx / wpx <= 2.0:
        raise _bad("custom size must have a portrait-like aspect (height/width within [0.5, 2])")
    return SizePreset(name, f"custom {wmm:g}x{hmm:g} mm", wmm, hmm, wpx, hpx, dpi,
                      CUSTOM_HEAD[0], CUSTOM_HEAD[1], CUSTOM_TOP[0], CUSTOM_TOP[1])


#: Named backgrounds. Blue is the Chinese certificate blue; the demo table's "Blue" (#628bce)
#: is a close variant and can be asked for by hex.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "blue": (67, 142, 219),
    "white": (255, 255, 255),
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_colour(value: Any) -> tuple[int, int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    if isinstance(value, str):
        v = value.strip().lower()
        if v in COLOURS:
            return COLOURS[v]
        m = _HEX.match(v)
        if m:
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    raise _bad(f"background must be one of {', '.join(COLOURS)} or a colour as #rrggbb")


def hex_of(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
