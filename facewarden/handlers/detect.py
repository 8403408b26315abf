"""The ``detect`` handler: where the faces are, as JSON (boxes and scores), no pixels out.

It exists for callers that draw or count faces themselves (the API's /detect, the console's
box overlay). Boxes are image pixel coordinates; no landmarks, no crops, nothing that
identifies a face.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from facewarden.handlers.anonymize import DEFAULT_DETECTOR, DEFAULT_MIN_SCORE, AnonymizeHandler
from facewarden.handlers.base import HandlerContext, HandlerResult, Output, register
from facewarden.handlers.imageio import DecodedImage
from facewarden.handlers.params import Param, ParamSchema
from facewarden.models.detectors import names as detector_names

SCHEMA = ParamSchema("detect", [
    Param("detector", "choice", DEFAULT_DETECTOR, "face detector (as anonymize's)", choices=tuple(detector_names())),
    Param("min_score", "number", DEFAULT_MIN_SCORE, "detector confidence floor", minimum=0.05, maximum=1.0),
], "Finds faces and returns their boxes and scores as JSON; writes no image.")


class DetectHandler(AnonymizeHandler):
    """Shares anonymize's cached detectors, so a detect call loads no second model."""

    name = "detect"
    schema = SCHEMA
    beside_suffix = "_faces"

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return SCHEMA.validate(params)  # its own schema, not anonymize's

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        det = self._detector(ctx, p)
        faces = det.detect(image.rgb)
        boxes = [{"x": round(f.x, 1), "y": round(f.y, 1), "w": round(f.w, 1), "h": round(f.h, 1),
                  "score": round(float(f.score), 4)} for f in faces]
        body = {"width": image.width, "height": image.height, "faces": boxes, "detector": det.name}
        return HandlerResult(outputs=[Output(json.dumps(body).encode(), ".json", "application/json", suffix="-faces")],
                             facts={"faces": len(faces), "detector": det.name, "min_score": p["min_score"]},
                             models=det.model_ids())


register("detect", DetectHandler)
