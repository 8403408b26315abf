"""The runtime environment stays lean: walked from uv.lock, the packages the daemon installs
(no dev or convert group) never include the heavy ones rembg used to drag in, nor onnx."""

from __future__ import annotations

import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"
#: numba + llvmlite (~190 MB, a ~60 s first-import compile), scipy, scikit-image, pymatting,
#: and onnx (only `models install` needs it: dependency group "convert").
BANNED = {"numba", "llvmlite", "scipy", "scikit-image", "pymatting", "rembg", "onnx"}


def _runtime_closure(lock: dict) -> set[str]:
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo = ["facewarden"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        pkg = packages[name]
        deps = list(pkg.get("dependencies", []))
        # Extras asked for by a dependency edge pull in that package's optional deps too;
        # over-approximate by following every extra of every package (markers ignored too):
        # a package that is absent from this superset is certainly absent at run time.
        for extra_deps in pkg.get("optional-dependencies", {}).values():
            deps += extra_deps
        todo += [d["name"] for d in deps if d["name"] in packages]
    return seen


def test_runtime_closure_has_none_of_the_heavy_packages() -> None:
    lock = tomllib.loads(LOCK.read_text())
    closure = _runtime_closure(lock)
    assert {"onnxruntime", "mediapipe", "pillow-heif", "numpy"} <= closure  # the walk really walks
    assert not closure & BANNED, f"runtime dependencies include {sorted(closure & BANNED)}"


def test_onnx_is_only_in_the_convert_group() -> None:
    lock = tomllib.loads(LOCK.read_text())
    me = next(p for p in lock["package"] if p["name"] == "facewarden")
    groups = me.get("dev-dependencies", {})
    assert any(d["name"] == "onnx" for d in groups.get("convert", [])), "models install needs onnx"
