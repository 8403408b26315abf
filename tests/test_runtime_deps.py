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


def test_every_handler_runs_without_the_convert_group(tmp_path, data_dir, models_dir):
    """The runtime install has no onnx (only `models install` converts with it): every
    model must load without it. A fresh interpreter where `import onnx` fails stands in
    for the `--no-dev` environment (CenterFace once edited its graph with onnx at load)."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["onnx"] = None  # ImportError on `import onnx`, as in the runtime install
import facewarden
s = facewarden.Facewarden(models_dir={str(models_dir)!r})
photo = {str(sorted((data_dir / "faces-pascal").glob("*.jpg"))[0])!r}
print("auto", s.anonymize(photo).faces)
for det in ("ensemble", "centerface", "finder-enroll", "finder-verify", "finder-idphoto"):
    print(det, s.anonymize(photo, detector=det).faces)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = ("auto", "ensemble", "centerface", "finder-enroll", "finder-verify", "finder-idphoto")
    faces = {w[0]: int(w[1]) for w in (line.split() for line in done.stdout.splitlines())
             if len(w) == 2 and w[0] in names}  # (log lines go to stdout too)
    assert set(faces) == set(names) and all(n > 0 for n in faces.values()), done.stdout
