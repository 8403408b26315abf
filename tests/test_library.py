"""The Python API: `from facewarden import anonymize, idphoto, enroll, verify` on paths, bytes
and arrays, with the daemon's validation, safety checks and (with a state dir) audit log."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

import facewarden
from facewarden.errors import InputRejected
from facewarden.storage.audit import AuditLog


@pytest.fixture(scope="module")
def session(models_dir):
    return facewarden.Facewarden(models_dir=models_dir)


def test_import_facewarden_loads_no_model_runtime():
    import subprocess
    import sys

    code = ("import sys, facewarden; facewarden.__version__; "
            "print(sorted(m for m in ('cv2', 'mediapipe', 'onnxruntime', 'dlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_anonymize_path_bytes_and_array_agree_and_change_the_faces(session, face_photo):
    by_path = session.anonymize(face_photo)
    by_bytes = session.anonymize(face_photo.read_bytes())
    assert by_path.faces and by_path.faces > 0
    assert by_path.data == by_bytes.data
    assert by_path.input_sha256 == hashlib.sha256(face_photo.read_bytes()).hexdigest()
    original = np.asarray(Image.open(face_photo).convert("RGB"), dtype=np.int16)
    out = by_path.image().astype(np.int16)
    assert out.shape == original.shape
    assert np.abs(out - original).mean() > 0.5  # faces really obscured
    by_array = session.anonymize(original.astype(np.uint8))
    assert by_array.faces == by_path.faces
    assert by_array.extension == ".png"  # arrays come back lossless


def test_params_are_validated_like_jobs(session, face_photo):
    with pytest.raises(InputRejected) as err:
        session.anonymize(face_photo, mode="smudge")
    assert err.value.code == "params.invalid"
    assert session.anonymize(face_photo, mode="pixelate").params["mode"] == "pixelate"


def test_bad_input_is_rejected_with_a_reason(session, tmp_path):
    with pytest.raises(InputRejected) as err:
        session.anonymize(b"not an image at all")
    assert err.value.code.startswith("input.")
    with pytest.raises(InputRejected) as err:
        session.anonymize(tmp_path / "missing.jpg")
    assert err.value.code == "input.missing"


def test_save_never_replaces_a_file_unless_asked(session, face_photo, tmp_path):
    result = session.anonymize(face_photo)
    target = tmp_path / "x.jpg"
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        result.save(target)
    assert target.read_bytes() == b"original"
    result.save(target, overwrite=True)
    assert target.read_bytes() == result.data


def test_with_a_state_dir_the_same_audit_record_is_written(models_dir, face_photo, tmp_path):
    session = facewarden.Facewarden(models_dir=models_dir, state_dir=tmp_path / "state")
    result = session.anonymize(face_photo)
    assert result.record is not None
    assert result.record["outputs"][0]["sha256"] == hashlib.sha256(result.data).hexdigest()
    assert result.record["input"]["sha256"] == result.input_sha256
    log = AuditLog(tmp_path / "state")
    assert log.count() == 1
    assert log.verify().ok


@pytest.mark.slow
def test_enroll_then_verify_recognises_the_subject(models_dir, data_dir, tmp_path):
    knn = data_dir / "identities-knn"
    session = facewarden.Facewarden(models_dir=models_dir, state_dir=tmp_path / "state")
    enrolled = session.enroll(knn / "train" / "alex_lacamoire" / "img1.jpg", "subject-a")
    assert enrolled.facts["subject"] == "subject-a"
    checkin = session.verify(knn / "test" / "alex_lacamoire1.jpg")
    assert checkin.facts["known"] == ["subject-a"], checkin.facts
    stranger = session.verify(knn / "test" / "johnsnow_test1.jpg")
    assert stranger.facts["known"] == [] and stranger.facts["unknown"] >= 1, stranger.facts
    assert AuditLog(tmp_path / "state").verify().ok


def test_enroll_without_state_dir_is_refused(session, face_photo):
    with pytest.raises(InputRejected):
        session.run("enroll", face_photo, {"subject": "someone"})
