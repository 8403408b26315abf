"""What counts as a video: by name (extension) and by the first bytes (magic numbers).

The pipeline asks this before it reads an input, so that videos are streamed to a temp
file instead of being read into memory like photos.
"""

from __future__ import annotations

import posixpath

#: Extension -> container family. The family decides the output muxer and its codecs.
EXTENSIONS: dict[str, str] = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".qt": "mov",
    ".mkv": "mkv", ".webm": "webm", ".avi": "avi",
}
#: Container family -> (muxer name for PyAV, content type).
FAMILIES: dict[str, tuple[str, str]] = {
    "mp4": ("mp4", "video/mp4"),
    "mov": ("mov", "video/quicktime"),
    "mkv": ("matroska", "video/x-matroska"),
    "webm": ("webm", "video/webm"),
    "avi": ("avi", "video/x-msvideo"),
}
MEDIA_KINDS = ("any", "image", "video")
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis",
                 b"avio", b"jpeg", b"jpgs"}


def family_of_name(key: str) -> str | None:
    """The container family a key's extension names, or None for a non-video name."""
    return EXTENSIONS.get(posixpath.splitext(key)[1].lower())


def is_video_name(key: str) -> bool:
    return family_of_name(key) is not None


def media_of_name(key: str) -> str:
    """"video" or "image" (anything not named as a video is treated as an image)."""
    return "video" if is_video_name(key) else "image"


def sniff(head: bytes) -> str | None:
    """The container family the first bytes show, or None when they are not a video we take.

    ISO-BMFF (mp4/mov) has ``ftyp`` at offset 4 (QuickTime files may start with ``moov``,
    ``mdat``, ``wide`` or ``free``); Matroska and WebM start with the EBML magic and name
    their doctype in the header; AVI is a RIFF file of form ``AVI ``.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:  # HEIF/HEIC/AVIF photos are ISO-BMFF too
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in head[:64] else "mkv"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None
