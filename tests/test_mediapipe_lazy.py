"""MediaPipe's two tasks we use load without matplotlib or sounddevice — which are not even
installed (pyproject's override-dependencies: only MediaPipe's drawing and audio utilities
import them) — and the rest of MediaPipe's task API is still there when asked for. Runs in a
fresh interpreter (what is imported is per process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from facewarden.models.mediapipe_lazy import defer_package_inits
    if sys.argv[1] == "lazy":
        defer_package_inits()
    else:  # a normal import first: deferring then does nothing
        import mediapipe.tasks.python.vision
    from facewarden.models.detect_mediapipe import MediaPipeDetector
    from facewarden.models.segment_mediapipe import MediaPipeSegmenter
    rgb = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
    faces = MediaPipeDetector(Path(sys.argv[3]), min_score=0.3).detect(rgb)
    mask = MediaPipeSegmenter(Path(sys.argv[3])).segment(rgb)
    heavy = sorted(m for m in ("matplotlib", "sounddevice") if m in sys.modules)
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    later = [mp.Image.__name__, vision.HandLandmarker.__name__,
             mp.tasks.vision.FaceDetector.__name__, mp.tasks.BaseOptions.__name__]
    print(json.dumps({"boxes": [[round(f.x, 2), round(f.y, 2), round(f.w, 2)] for f in faces],
                      "mask": round(float(mask.sum()), 1), "heavy": heavy, "later": later}))
""")


def _run(mode: str, photo: Path, models_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(photo), str(models_dir)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mediapipe_tasks_work_without_matplotlib_installed(data_dir: Path, models_dir: Path) -> None:
    import importlib.util

    assert importlib.util.find_spec("matplotlib") is None, "matplotlib is back in the environment"
    photo = data_dir / "idphoto-specs" / "demo" / "images" / "test0.jpg"
    lazy = _run("lazy", photo, models_dir)
    assert lazy["heavy"] == []
    assert len(lazy["boxes"]) == 1 and lazy["mask"] > 0
    # Anything else of MediaPipe's task API still resolves, by name or as a submodule, after the fact.
    assert lazy["later"] == ["Image", "HandLandmarker", "FaceDetector", "BaseOptions"]
