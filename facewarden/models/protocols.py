"""The seams between handlers and models: a new backend is one new file behind one of these.

Images are always RGB ``uint8`` arrays of shape (H, W, 3), already EXIF-oriented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face in image pixel coordinates."""

    x: float
    y: float
    w: float
    h: float
    score: float
    #: Optional landmarks as (x, y) pairs: right eye, left eye, nose, mouth right, mouth left
    #: (the order YuNet and MediaPipe share); empty when the backend gives none.
    landmarks: tuple[tuple[float, float], ...] = field(default=())
    #: Which model(s) found it, e.g. "yunet" or "yunet+centerface" (FaceFinder's merge).
    source: str = ""

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (round(self.x), round(self.y), round(self.w), round(self.h))


@dataclass(frozen=True, slots=True)
class ModelId:
    """What the audit record says about a model: enough to prove which bytes ran."""

    name: str
    source: str  # e.g. "mediapipe==0.10.21"
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "sha256": self.sha256}


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces. Must raise (never return an empty list) when it could not look."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...

    def model_ids(self) -> list[ModelId]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Returns a float32 person mask in [0, 1] with the image's height and width."""

    name: str

    def segment(self, rgb: np.ndarray) -> np.ndarray: ...

    def model_ids(self) -> list[ModelId]: ...


@runtime_checkable
class Embedder(Protocol):
    """Turns each given face of an image into a unit-free embedding vector (float32)."""

    name: str
    dim: int
    #: Distance below which two embeddings are the same person, calibrated by bench/.
    default_threshold: float

    def embed(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    def model_ids(self) -> list[ModelId]: ...
