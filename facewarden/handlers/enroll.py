"""The ``enroll`` and ``verify`` handlers: register people from photos, check them in.

Embeddings are biometric data. ``run`` puts them only in ``HandlerResult.private`` (which
the worker never logs nor audits); outputs and facts carry boxes, quality figures, subject
ids and distances, never a vector. ``enroll.commit`` is the one place they leave the
handler, into the gallery, after the receipt is durable.

The gallery is reached through ``ctx.services["gallery"]`` as a ``GalleryView``: handlers
never import storage (the pipeline opens the gallery lazily on first use).

Faces come from the FaceFinder (facewarden/models/finder.py): ``enroll`` under its
precision-first policy (confident faces only: low-score detections are mostly background
faces or false positives, which would trip the one-face rule), ``verify`` under its balanced
one; both look at every scale, so the face of a 12 MP phone portrait is found as surely as
one in a 640-px webcam frame. Each face is aligned before it is embedded.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

import cv2
import numpy as np
import structlog

from facewarden.errors import FacewardenError, InputRejected, ProcessingFailed
from facewarden.handlers.base import CommittingHandler, Handler, HandlerContext, HandlerResult, Output, register
from facewarden.handlers.imageio import DecodedImage, encode
from facewarden.handlers.params import Param, ParamSchema
from facewarden.models.detectors import make_detector
from facewarden.models.embedders import ALIASES, DEFAULT, make_embedder
from facewarden.models.finder import POLICIES
from facewarden.models.protocols import Embedder, Face, FaceDetector

log = structlog.get_logger(__name__)

#: FaceFinder policies (facewarden/models/finder.py POLICIES) per handler.
ENROLL_DETECTOR = "finder-enroll"
VERIFY_DETECTOR = "finder-verify"
#: Calibrated score a face needs to be matched and listed by verify (the verify policy's own).
DETECTOR_MIN_SCORE = POLICIES["verify"].min_score
#: Smallest face (box width, px) enrolment accepts: below ~60 px the embedding is noisy.
DEFAULT_MIN_FACE = 60
#: Variance of the Laplacian of the face resized to 160 px, below which it is too blurry to
#: enrol. Sharp faces in identities-knn score 160-3600; a face blurred past recognition ~10.
DEFAULT_MIN_SHARPNESS = 40.0
#: A second face counts (face.multiple) when at least this fraction of the largest face's
#: width; smaller ones are people far in the background, not a second subject.
SECOND_FACE_RATIO = 0.5
#: Verify embeds faces down to this width; smaller ones are reported unknown ("too_small").
VERIFY_MIN_FACE = 24
#: With anonymize_unknown, the look is the anonymize (recall-first) policy's: detections down
#: to its score are obscured too, though too uncertain to be matched or listed: the copy
#: fails closed.
ANONYMIZE_DETECTOR = "auto"
ANONYMIZE_MIN_SCORE = POLICIES["anonymize"].min_score
ANONYMIZE_MODES = ("blur", "pixelate", "fill")
_SUBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class GalleryView(Protocol):
    """What the handlers need of the gallery (facewarden.storage.gallery.Gallery has it)."""

    def nearest(self, backend: str, vectors: np.ndarray, *, k: int = 1,
                exclude: str | None = None) -> list[list[Any]]:
        """Per query vector, nearest subjects first; each item has .subject and .distance."""
        ...

    def add_embedding(self, subject: str, backend: str, vector: np.ndarray, *, photo_sha256: str,
                      source_key: str | None = None, name: str | None = None, consent: str | None = None,
                      retain_until: float | None = None) -> bool: ...


def _rejected(msg: str) -> InputRejected:
    return InputRejected("params.invalid", msg)


def subject_from_key(key: str) -> str | None:
    """``enroll/alice/1.jpg`` -> ``alice``: the photo's parent folder names the subject."""
    parent = posixpath.basename(posixpath.dirname(key.replace("\\", "/")))
    return parent if parent and _SUBJECT.match(parent) else None


def _check_subject(value: Any) -> str:
    if not isinstance(value, str) or not _SUBJECT.match(value):
        raise _rejected("subject must be 1-128 characters of letters, digits, '.', '_', '-', '@', "
                        "starting with a letter or digit")
    return value


def _backend(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ALIASES:
        raise ValueError("must be one of dlib, facenet")
    return ALIASES[value.strip().lower()]


def _subject(value: Any) -> str:
    try:
        return _check_subject(value)
    except InputRejected as err:
        raise ValueError(err.message.removeprefix("subject ")) from None


_BACKEND = Param("backend", "custom", DEFAULT, "face embedding model: dlib (128-d ResNet) or facenet (512-d)",
                 parse=_backend, type_text="dlib | facenet")
ENROLL_SCHEMA = ParamSchema("enroll", [
    Param("subject", "custom", None, "subject id; default: the name of the folder the photo is in "
          "(enroll/<subject>/photo.jpg)", parse=_subject, optional=True, type_text="id (letters, digits, . _ - @)"),
    Param("name", "text", None, "display name, stored encrypted", maximum=200, optional=True),
    _BACKEND,
    Param("consent", "text", None, "consent text or reference, stored encrypted", maximum=2000, optional=True),
    Param("retain_days", "number", None, "erase the subject this many days after enrolment",
          minimum=0, maximum=36500, optional=True),
    Param("min_face", "custom", DEFAULT_MIN_FACE, "smallest face width accepted, px",
          parse=lambda v: int(Param("min_face", "number", None, "", minimum=16, maximum=4096).normalise(v)),
          type_text="number [16, 4096]"),
    Param("min_sharpness", "number", DEFAULT_MIN_SHARPNESS, "sharpness floor (variance of the Laplacian)",
          minimum=0, maximum=100000),
    Param("request", "text", None, "caller's request id, echoed in the receipt", maximum=100, optional=True),
], "Adds a subject's face embedding to the gallery after quality checks.")
VERIFY_SCHEMA = ParamSchema("verify", [
    _BACKEND,
    Param("threshold", "number", None, "match distance threshold; default: the backend's calibrated one",
          minimum=0, maximum=4, optional=True),
    Param("anonymize_unknown", "bool", False, "also write a copy where every face not recognised is obscured"),
    Param("anonymize_mode", "choice", "blur", "how unknown faces are obscured", choices=tuple(ANONYMIZE_MODES)),
    Param("jpeg_quality", "integer", 90, "quality of JPEG results", minimum=1, maximum=100),
], "Matches every face in a photo against the gallery: a check-in record naming each face or unknown.")


class _FaceHandler(Handler):
    """Shared: a cached detector and embedder, and the gallery from the context."""

    detector_name = VERIFY_DETECTOR

    def _models(self, ctx: HandlerContext, backend: str) -> tuple[FaceDetector, Embedder]:
        try:
            det = make_detector(self.detector_name, ctx.models_dir)
            emb = make_embedder(backend, ctx.models_dir)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001 - no model means no result
            raise ProcessingFailed("embedder.unavailable", f"face models could not load: {exc}") from exc
        return det, emb

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:
        p = self.validate_params(params)  # type: ignore[attr-defined]
        det, emb = self._models(ctx, p["backend"])
        grey = np.full((200, 200, 3), 127, np.uint8)
        det.detect(grey)
        emb.embed(grey, [Face(50, 40, 100, 130, 1.0)])

    @staticmethod
    def _detect(det: FaceDetector, rgb: np.ndarray) -> list[Face]:
        try:
            faces = det.detect(rgb)
        except FacewardenError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ProcessingFailed("detector.error", f"face detection failed: {type(exc).__name__}") from exc
        return sorted(faces, key=lambda f: f.w * f.h, reverse=True)

    @staticmethod
    def _gallery(ctx: HandlerContext) -> GalleryView:
        try:
            return ctx.services["gallery"]
        except KeyError:
            raise ProcessingFailed("gallery.unavailable", "no gallery is configured for this worker",
                                   retryable=False) from None


def sharpness(rgb: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the face, resized to 160 px so the figure does not
    depend on the face's size in pixels."""
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(face.x)), max(0, int(face.y))
    x1, y1 = min(w, math.ceil(face.x + face.w)), min(h, math.ceil(face.y + face.h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (160, 160), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _overlaps(a: Face, b: Face) -> bool:
    """Two detections of one face: either's centre inside the other's box."""
    def inside(p: Face, q: Face) -> bool:
        cx, cy = p.x + p.w / 2, p.y + p.h / 2
        return q.x <= cx <= q.x + q.w and q.y <= cy <= q.y + q.h
    return inside(a, b) or inside(b, a)


def _box(face: Face) -> list[int]:
    return list(face.box)


class EnrollHandler(_FaceHandler, CommittingHandler):
    """Quality-gates one face per photo and, in ``commit``, adds its embedding."""

    name = "enroll"
    schema = ENROLL_SCHEMA
    detector_name = ENROLL_DETECTOR

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        det, emb = self._models(ctx, p["backend"])
        t0 = time.perf_counter()
        faces = self._detect(det, image.rgb)
        if not faces:
            raise InputRejected("face.none", "no face was found in the photo; enrol a photo showing one face")
        main = faces[0]
        others = [f for f in faces[1:] if f.w >= SECOND_FACE_RATIO * main.w]
        if others:
            raise InputRejected("face.multiple", f"the photo shows {1 + len(others)} faces; enrol a photo of "
                                "the subject alone so the embedding cannot belong to someone else")
        if main.w < p["min_face"]:
            raise InputRejected("face.too_small", f"the face is {main.w:.0f} px wide, under the minimum of "
                                f"{p['min_face']} px; use a closer or larger photo")
        sharp = sharpness(image.rgb, main)
        if sharp < p["min_sharpness"]:
            raise InputRejected("face.blurry", f"the face is too blurry (sharpness {sharp:.0f}, minimum "
                                f"{p['min_sharpness']:.0f}); use a sharper photo")
        t1 = time.perf_counter()
        vec = emb.embed(image.rgb, [main])[0]
        t2 = time.perf_counter()
        quality = {"face_width": round(main.w), "face_height": round(main.h), "detector_score": round(main.score, 3),
                   "sharpness": round(sharp, 1), "background_faces": len(faces) - 1}
        candidates = self._duplicates(ctx, p, emb, vec)
        # Without a subject param the subject is only known at commit (from the folder), so
        # only then can a match be told apart from the same person's earlier photo.
        warnings = candidates if "subject" in p else None
        receipt = {"kind": "enrollment", "subject": p.get("subject"), "subject_from": "param" if "subject" in p
                   else "folder", "backend": emb.name, "box": _box(main), "quality": quality, "warnings": warnings,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        log.info("enroll.accepted", backend=emb.name, face_width=quality["face_width"],
                 sharpness=quality["sharpness"], warnings=len(candidates))
        return HandlerResult(
            outputs=[Output(json.dumps(receipt, indent=2).encode(), ".json", "application/json",
                            suffix="-enrolled")],
            facts={"faces": len(faces), "subject": p.get("subject"), "backend": emb.name, "box": _box(main),
                   "quality": quality, "warnings": warnings, "detect_ms": round((t1 - t0) * 1000, 1),
                   "embed_ms": round((t2 - t1) * 1000, 1)},
            models=[*det.model_ids(), *emb.model_ids()],
            private={"embedding": vec, "backend": emb.name, "candidates": candidates},
        )

    def _duplicates(self, ctx: HandlerContext, p: Mapping[str, Any], emb: Embedder, vec: np.ndarray
                    ) -> list[dict[str, Any]]:
        """A warning, not a rejection: twins and look-alikes exist, and the person enrolling
        may know better; the operator sees it in the receipt and the audit record."""
        try:
            gallery = self._gallery(ctx)
        except ProcessingFailed:
            return []
        found = gallery.nearest(emb.name, vec[None, :], k=3, exclude=p.get("subject"))[0]
        return [{"code": "face.duplicate", "other_subject": m.subject, "distance": round(m.distance, 4),
                 "message": f"this face is within the match threshold of subject {m.subject!r}"}
                for m in found if m.distance < emb.default_threshold]

    def commit(self, result: HandlerResult, params: Mapping[str, Any], ctx: HandlerContext, *,
               input_sha256: str, input_key: str) -> None:
        """Adds the embedding; idempotent (same photo, subject and backend = no new row)."""
        p = self.validate_params(params)
        subject = p.get("subject") or subject_from_key(input_key)
        if subject is None:
            raise InputRejected("enroll.no_subject", "no subject: pass the subject param or put the photo in "
                                "a folder named after the subject (enroll/<subject-id>/photo.jpg)")
        vec = result.private.get("embedding")
        if vec is None:
            raise ProcessingFailed("enroll.no_embedding", "the enroll result has no embedding", retryable=False)
        retain = time.time() + p["retain_days"] * 86400.0 if "retain_days" in p else None
        added = self._gallery(ctx).add_embedding(subject, result.private["backend"], vec,
                                                 photo_sha256=input_sha256, source_key=input_key,
                                                 name=p.get("name"), consent=p.get("consent"), retain_until=retain)
        # The pipeline puts result.facts into the audit record after commit returns.
        result.facts["subject"] = subject
        result.facts["warnings"] = [w for w in result.private.get("candidates", []) if w["other_subject"] != subject]
        result.facts["added"] = added


class VerifyHandler(_FaceHandler):
    """Matches every face in the photo against the gallery: a check-in record."""

    name = "verify"
    schema = VERIFY_SCHEMA

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        p = self.validate_params(params)
        det, emb = self._models(ctx, p["backend"])
        threshold = p.get("threshold", emb.default_threshold)
        gallery = self._gallery(ctx)
        t0 = time.perf_counter()
        faces, uncertain = self._detect(det, image.rgb), []
        if p["anonymize_unknown"]:
            # A second look under the recall-first policy: whatever it finds that is not one
            # of the record's faces is obscured too, though too uncertain to be matched or
            # listed: the copy fails closed.
            wide = make_detector(ANONYMIZE_DETECTOR, ctx.models_dir)
            uncertain = [u for u in self._detect(wide, image.rgb) if not any(_overlaps(u, f) for f in faces)]
        usable = [f for f in faces if f.w >= VERIFY_MIN_FACE]
        t1 = time.perf_counter()
        vecs = emb.embed(image.rgb, usable)
        t2 = time.perf_counter()
        matches = gallery.nearest(emb.name, np.asarray(vecs, np.float32).reshape(len(vecs), emb.dim))
        by_face = {id(f): m for f, m in zip(usable, matches, strict=True)}
        records, unknown = [], []
        for f in faces:
            m = by_face.get(id(f))
            best = m[0] if m else None
            known = best is not None and best.distance < threshold
            rec: dict[str, Any] = {"box": _box(f), "score": round(f.score, 3),
                                   "subject": best.subject if known else "unknown",
                                   "distance": round(best.distance, 4) if best is not None else None}
            if id(f) not in by_face:
                rec["note"] = "too_small"
            records.append(rec)
            if not known:
                unknown.append(f)
        checkin = {"kind": "checkin", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "backend": emb.name, "threshold": threshold, "faces": records,
                   "known": sorted({r["subject"] for r in records if r["subject"] != "unknown"}),
                   "unknown": len(unknown)}
        outputs = [Output(json.dumps(checkin, indent=2).encode(), ".json", "application/json", suffix="-checkin")]
        models = [*det.model_ids(), *emb.model_ids()]
        if p["anonymize_unknown"]:
            models = [*models, *(m for m in wide.model_ids() if m not in models)]
            from facewarden.handlers.anonymize import obscure_faces

            pixels = obscure_faces(image.rgb, [*unknown, *uncertain], mode=p["anonymize_mode"])
            outputs.append(Output(encode(pixels, like=image, jpeg_quality=p["jpeg_quality"]), image.extension,
                                  image.content_type, suffix="-unknown-blurred"))
        log.info("verify.done", faces=len(faces), known=len(checkin["known"]), unknown=len(unknown),
                 backend=emb.name)
        return HandlerResult(
            outputs=outputs,
            facts={"faces": len(faces), "known": checkin["known"], "unknown": len(unknown), "backend": emb.name,
                   "threshold": threshold, "obscured": len(unknown) + len(uncertain) if p["anonymize_unknown"]
                   else 0, "detect_ms": round((t1 - t0) * 1000, 1),
                   "embed_ms": round((t2 - t1) * 1000, 1)},
            models=models,
        )


register("enroll", EnrollHandler)
register("verify", VerifyHandler)
