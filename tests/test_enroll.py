"""Enroll and verify on real photos (identities-knn: 5 people, 9 training photos, 5 test
photos, one of them with Obama, Biden and a third, never-enrolled person).

The handlers run with real models (YuNet, dlib) against a real gallery; the pipeline tests
go through ``process_paths``, the code behind ``facewarden process``."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facewarden.errors import InputRejected
from facewarden.handlers import base as handlers
from facewarden.handlers.base import HandlerContext
from facewarden.handlers.enroll import subject_from_key
from facewarden.handlers.imageio import decode
from facewarden.storage.gallery import SqliteGallery as Gallery

TRAIN = ("alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie")
#: Who is in each test photo (file name and SOURCE.txt), left to right is not assumed.
EXPECTED = {
    "alex_lacamoire1.jpg": {"alex_lacamoire"},
    "johnsnow_test1.jpg": {"kit_harington"},
    "kit_with_rose.jpg": {"kit_harington", "rose_leslie"},
    "obama1.jpg": {"obama"},
    "obama_and_biden.jpg": {"obama", "biden"},
}


@pytest.fixture(scope="module")
def knn(data_dir: Path) -> Path:
    return data_dir / "identities-knn"


def _enroll(ctx: HandlerContext, photo: Path, params: dict, key: str):
    h = handlers.get("enroll")
    p = h.validate_params(params)
    data = photo.read_bytes()
    result = h.run(decode(data), p, ctx)
    h.commit(result, p, ctx, input_sha256=hashlib.sha256(data).hexdigest(), input_key=key)
    return result


def _verify(ctx: HandlerContext, photo: Path, **params) -> tuple[dict, object]:
    h = handlers.get("verify")
    result = h.run(decode(photo.read_bytes()), h.validate_params(params), ctx)
    return json.loads(result.outputs[0].data), result


@pytest.fixture(scope="module")
def enrolled(knn: Path, models_dir: Path, tmp_path_factory) -> tuple[HandlerContext, Gallery]:
    """All training photos enrolled through the handler, subject from the folder name."""
    gallery = Gallery(tmp_path_factory.mktemp("gallery"))
    ctx = HandlerContext(models_dir=models_dir, services={"gallery": gallery})
    for photo in sorted((knn / "train").glob("*/*")):
        result = _enroll(ctx, photo, {}, f"enroll/{photo.parent.name}/{photo.name}")
        assert result.facts["subject"] == photo.parent.name and result.facts["added"] is True
    return ctx, gallery


@pytest.mark.slow
def test_every_known_face_is_named_and_the_stranger_is_unknown(enrolled, knn: Path) -> None:
    ctx, _ = enrolled
    for name, people in EXPECTED.items():
        checkin, result = _verify(ctx, knn / "test" / name)
        named = [f["subject"] for f in checkin["faces"] if f["subject"] != "unknown"]
        assert sorted(named) == sorted(people), (name, checkin["faces"])
        assert all(f["distance"] < checkin["threshold"] for f in checkin["faces"] if f["subject"] != "unknown")
        assert result.private == {} and "embedding" not in json.dumps(result.facts)
    checkin, _ = _verify(ctx, knn / "test" / "obama_and_biden.jpg")
    # Obama, Biden, and a third person in the foreground who was never enrolled (the finder
    # also lists a background face of 18 px, too small to match: noted, never named).
    matched = [f for f in checkin["faces"] if f.get("note") != "too_small"]
    assert len(matched) == 3 and [f["subject"] for f in matched].count("unknown") == 1
    assert all(f["subject"] == "unknown" for f in checkin["faces"] if f.get("note") == "too_small")
    stranger = next(f for f in matched if f["subject"] == "unknown")
    assert stranger["distance"] >= checkin["threshold"] and len(stranger["box"]) == 4


def test_a_person_left_out_of_the_gallery_comes_out_unknown(enrolled, knn: Path, tmp: Path, models_dir: Path) -> None:
    _, full = enrolled
    partial = Gallery(tmp / "partial")
    for sid in TRAIN:
        if sid == "alex_lacamoire":
            continue
        for e in full.export(sid)["embeddings"]:
            partial.add_embedding(sid, e["backend"], np.asarray(e["vector"], np.float32),
                                  photo_sha256=e["photo_sha256"])
    ctx = HandlerContext(models_dir=models_dir, services={"gallery": partial})
    checkin, _ = _verify(ctx, knn / "test" / "alex_lacamoire1.jpg")
    assert [f["subject"] for f in checkin["faces"]] == ["unknown"]


@pytest.mark.slow
def test_anonymize_unknown_obscures_only_the_stranger(enrolled, knn: Path) -> None:
    ctx, _ = enrolled
    photo = knn / "test" / "obama_and_biden.jpg"
    checkin, result = _verify(ctx, photo, anonymize_unknown=True)
    assert [o.suffix for o in result.outputs] == ["-checkin", "-unknown-blurred"]
    before = decode(photo.read_bytes()).rgb.astype(np.int16)
    after = np.asarray(Image.open(io.BytesIO(result.outputs[1].data)).convert("RGB")).astype(np.int16)

    def change(box) -> float:
        x, y, w, h = box
        return float(np.abs(after[y:y + h, x:x + w] - before[y:y + h, x:x + w]).mean())

    for f in checkin["faces"]:
        if f["subject"] == "unknown":
            assert change(f["box"]) > 8.0  # blurred
        else:
            assert change(f["box"]) < 3.0  # only JPEG re-encoding noise
    # Detections too uncertain to match or list (the recall-first look finds more than the
    # record's faces) are still obscured: the anonymized copy fails closed.
    from facewarden.handlers.enroll import ANONYMIZE_DETECTOR, _overlaps
    from facewarden.models.detectors import make_detector
    from facewarden.models.protocols import Face

    every = make_detector(ANONYMIZE_DETECTOR, ctx.models_dir).detect(before.astype(np.uint8))
    listed = [Face(*f["box"], 1.0) for f in checkin["faces"]]
    uncertain = [f for f in every if not any(_overlaps(f, r) for r in listed)]
    assert uncertain and result.facts["obscured"] == checkin["unknown"] + len(uncertain)
    for f in uncertain:
        assert change(f.box) > 8.0


@pytest.mark.slow
def test_enrolment_rejects_no_face_two_faces_small_and_blurry(enrolled, knn: Path, tmp: Path) -> None:
    ctx, gallery = enrolled
    n = gallery.count()
    rgb = decode((knn / "test" / "obama_and_biden.jpg").read_bytes()).rgb
    cases = {
        "face.none": rgb[900:, :900],  # the lower-left of the photo: floor and furniture
        "face.multiple": decode((knn / "test" / "kit_with_rose.jpg").read_bytes()).rgb,
        "face.too_small": cv2.resize(decode((knn / "train/obama/obama.jpg").read_bytes()).rgb, None,
                                     fx=0.18, fy=0.18, interpolation=cv2.INTER_AREA),
        "face.blurry": cv2.GaussianBlur(decode((knn / "train/obama/obama.jpg").read_bytes()).rgb, (0, 0), 6),
    }
    for code, pixels in cases.items():
        path = tmp / f"{code}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)
        with pytest.raises(InputRejected) as exc:
            _enroll(ctx, path, {"subject": "someone"}, path.name)
        assert exc.value.code == code, (code, exc.value)
        assert exc.value.message and exc.value.message != code
    assert gallery.count() == n


def test_enrolment_is_idempotent_and_warns_about_another_subjects_face(enrolled, knn: Path) -> None:
    ctx, gallery = enrolled
    n = gallery.count()
    again = _enroll(ctx, knn / "train/obama/obama.jpg", {}, "enroll/obama/obama.jpg")
    assert again.facts["added"] is False and again.facts["warnings"] == [] and gallery.count() == n
    twin = _enroll(ctx, knn / "train/obama/obama2.jpg", {"subject": "barack"}, "x.jpg")
    assert [w["other_subject"] for w in twin.facts["warnings"]] == ["obama"]
    receipt = json.loads(twin.outputs[0].data)
    assert receipt["subject"] == "barack" and receipt["warnings"][0]["code"] == "face.duplicate"
    assert "embedding" not in receipt and "vector" not in json.dumps(receipt)
    assert gallery.delete("barack") == 1


def test_subject_comes_from_the_parent_folder() -> None:
    assert subject_from_key("enroll/alice/1.jpg") == "alice"
    assert subject_from_key("a/b/c/bob.smith/x.png") == "bob.smith"
    assert subject_from_key("photo.jpg") is None
    assert subject_from_key("enroll/../x.jpg") is None


def _walk_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _walk_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _walk_numbers(v)]
    return [obj] if isinstance(obj, float) else []


@pytest.mark.slow
def test_pipeline_enrols_from_folders_and_checks_in_with_audit_and_no_embeddings(knn: Path, models_dir: Path,
                                                                                tmp: Path) -> None:
    from facewarden.config import settings_from_flags
    from facewarden.daemon.oneshot import process_paths
    from facewarden.storage.audit import AuditLog
    from facewarden.storage.gallery import open_gallery

    state, out = tmp / "state", tmp / "out"
    drop = tmp / "in" / "enroll"
    for sid in ("obama", "biden"):
        (drop / sid).mkdir(parents=True)
        for p in (knn / "train" / sid).iterdir():
            (drop / sid / p.name).write_bytes(p.read_bytes())
    settings = settings_from_flags(None, state=state, models_dir=models_dir, environ={})
    lines: list[str] = []
    assert process_paths(settings, [tmp / "in"], out, "enroll", {}, echo=lines.append) == 0, lines
    assert process_paths(settings, [knn / "test" / "obama_and_biden.jpg"], out, "verify", {},
                         echo=lines.append) == 0, lines

    checkin = json.loads((out / "obama_and_biden-checkin.json").read_text())
    assert sorted(f["subject"] for f in checkin["faces"] if f.get("note") != "too_small") == \
        ["biden", "obama", "unknown"]
    record = json.loads((out / "obama_and_biden-checkin.json.audit.json").read_text())
    assert record["outcome"] == "ok" and record["handler"] == "verify"
    assert record["input"]["sha256"] == hashlib.sha256((knn / "test/obama_and_biden.jpg").read_bytes()).hexdigest()
    assert sorted(record["facts"]["known"]) == ["biden", "obama"]

    gallery = open_gallery(state)
    assert sorted(s["id"] for s in gallery.subjects()) == ["biden", "obama"]
    stored = {round(x, 5) for sid in ("biden", "obama") for e in gallery.export(sid)["embeddings"]
              for x in e["vector"]}
    records = [json.loads(text) for _, _, text, _ in AuditLog(state).iter_records()]
    assert [r["handler"] for r in records] == ["enroll"] * 4 + ["verify"]
    enrolled = [r for r in records if r["handler"] == "enroll"]
    assert sorted(r["facts"]["subject"] for r in enrolled) == ["biden", "biden", "obama", "obama"]
    receipt = json.loads((out / "enroll" / "obama" / "obama-enrolled.json").read_text())
    assert receipt["quality"]["face_width"] > 100
    for doc in [*records, receipt]:
        # No embedding value anywhere in an audit record or a receipt.
        assert not {round(x, 5) for x in _walk_numbers(doc)} & stored
        assert "embedding" not in json.dumps(doc) and "vector" not in json.dumps(doc)


def test_subjects_cli_add_list_export_delete_leaves_a_tombstone(knn: Path, models_dir: Path, tmp: Path) -> None:
    from facewarden.cli import cli
    from facewarden.storage.audit import AuditLog

    state = tmp / "state"
    common = ["--state", str(state)]
    r = CliRunner().invoke(cli, ["subjects", "add", "rose", str(knn / "train/rose_leslie/img1.jpg"),
                                 str(knn / "test/kit_with_rose.jpg"), "--name", "Rose Leslie",
                                 "--models-dir", str(models_dir), "--retain-days", "30", *common])
    assert r.exit_code == 1, r.output  # one photo rejected
    assert "face.multiple" in r.output
    r = CliRunner().invoke(cli, ["subjects", "list", "--json", *common])
    rows = json.loads(r.output)
    assert [(s["id"], s["name"], sum(s["embeddings"].values())) for s in rows] == [("rose", "Rose Leslie", 1)]
    exported = json.loads(CliRunner().invoke(cli, ["subjects", "export", "rose", *common]).output)
    assert len(exported["embeddings"]) == 1 and len(exported["embeddings"][0]["vector"]) == 128
    r = CliRunner().invoke(cli, ["subjects", "delete", "rose", *common])
    assert r.exit_code == 0, r.output
    records = [json.loads(text) for _, _, text, _ in AuditLog(state).iter_records()]
    tomb = [r for r in records if r["kind"] == "subject.deleted"]
    assert [(t["subject"], t["embeddings_removed"]) for t in tomb] == [("rose", 1)]
    # Neither the embedding nor the display name outlives the erasure in the audit log.
    assert "vector" not in json.dumps(records) and "Rose Leslie" not in json.dumps(records)
    assert json.loads(CliRunner().invoke(cli, ["subjects", "list", "--json", *common]).output) == []
    vec = np.asarray(exported["embeddings"][0]["vector"], np.float32).tobytes()
    raw = b"".join(p.read_bytes() for p in state.glob("gallery.db*"))
    assert vec[:16] not in raw


@pytest.mark.slow
def test_facenet_backend_with_mtcnn_crops_names_every_known_face(knn: Path, models_dir: Path, tmp: Path) -> None:
    """The second backend end to end: FaceNet on O-Net-refined crops, its own threshold,
    its own rows in the gallery (a dlib query never sees them)."""
    gallery = Gallery(tmp / "facenet")
    ctx = HandlerContext(models_dir=models_dir, services={"gallery": gallery})
    for photo in sorted((knn / "train").glob("*/*")):
        result = _enroll(ctx, photo, {"backend": "facenet"}, f"enroll/{photo.parent.name}/{photo.name}")
        assert result.facts["backend"] == "facenet-20180408" and result.facts["added"] is True
    assert gallery.count("facenet-20180408") == 9 and gallery.count("dlib-resnet-v1") == 0
    for name, people in EXPECTED.items():
        checkin, _ = _verify(ctx, knn / "test" / name, backend="facenet")
        named = sorted(f["subject"] for f in checkin["faces"] if f["subject"] != "unknown")
        assert named == sorted(people), (name, checkin["faces"])
        assert checkin["threshold"] == 0.95
    checkin, _ = _verify(ctx, knn / "test" / "obama_and_biden.jpg", backend="facenet")
    assert [f["subject"] for f in checkin["faces"] if f.get("note") != "too_small"].count("unknown") == 1
    dlib_view, _ = _verify(ctx, knn / "test" / "obama1.jpg")  # default backend: no rows yet
    assert [f["subject"] for f in dlib_view["faces"]] == ["unknown"]


def test_verify_a_photo_without_faces_gives_an_empty_checkin(enrolled, knn: Path, tmp: Path) -> None:
    ctx, _ = enrolled
    rgb = decode((knn / "test" / "obama_and_biden.jpg").read_bytes()).rgb[900:, :900]
    path = tmp / "floor.png"
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    checkin, result = _verify(ctx, path, anonymize_unknown=True)
    assert checkin["faces"] == [] and checkin["unknown"] == 0 and result.facts["faces"] == 0


def test_verify_fails_closed_on_a_locked_gallery_and_works_with_its_key(knn: Path, models_dir: Path,
                                                                        tmp: Path) -> None:
    from facewarden.config import settings_from_flags
    from facewarden.daemon.oneshot import process_paths
    from facewarden.storage.gallery import generate_key_file, open_gallery

    state, key = tmp / "state", tmp / "gallery.key"
    generate_key_file(key)
    g = open_gallery(state, key)
    ctx = HandlerContext(models_dir=models_dir, services={"gallery": g})
    _enroll(ctx, knn / "train/obama/obama.jpg", {"subject": "obama"}, "obama.jpg")
    photo = knn / "test" / "obama1.jpg"
    plain = settings_from_flags(None, state=state, models_dir=models_dir, environ={})
    lines: list[str] = []
    assert process_paths(plain, [photo], tmp / "out1", "verify", {}, echo=lines.append) == 1
    assert "gallery.locked" in lines[-1]
    assert not list((tmp / "out1").glob("*checkin*"))  # nothing written without the gallery
    keyed = plain.model_copy(update={"gallery": plain.gallery.model_copy(update={"key_file": key})})
    assert process_paths(keyed, [photo], tmp / "out2", "verify", {}, echo=lines.append) == 0, lines
    checkin = json.loads((tmp / "out2" / "obama1-checkin.json").read_text())
    assert [f["subject"] for f in checkin["faces"]] == ["obama"]
