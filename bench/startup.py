"""Start-up cost of facewarden as a new user meets it: installed runtime size, and the
whole-process time from launch to the first result.

    uv run python bench/startup.py                   # ~2-4 min: builds a fresh runtime venv
    uv run python bench/startup.py --rev 9c5b49b     # the same for an older commit (before/after)
    uv run python bench/startup.py --venv DIR        # reuse a runtime venv (no size, no cold run)

What is measured:

- **runtime size**: ``uv sync --frozen --no-dev`` of the commit's pyproject.toml + uv.lock into
  a new venv (uv's own wheel cache makes this fast; nothing from our models is in it): MB on
  disk and number of installed distributions, and which of the packages issue 10 banned
  (numba, llvmlite, scipy, scikit-image, pymatting, onnx) are present.
- **cold**: the first ``facewarden process PHOTO --handler H`` in that fresh venv. uv does not
  compile bytecode, so every module is compiled on this run, as on a fresh install. With
  ``--drop-caches`` (root) the OS page cache is dropped first; otherwise the venv's files were
  just written and sit in the page cache (``page_cache_dropped`` says which).
- **warm**: median of the next runs of the same command (new --out/--state each time).
- **run to ready**: ``facewarden run --watch W --out O`` with one photo already in W: time to
  the ``daemon.started`` event and to the first result file, median of warm runs.

Photos: a 1024-px crowd photo from wider-dev for anonymize, a HivisionIDPhotos demo portrait
for idphoto. Models come from the installed models directory (``models install`` is install, not start).
Timings are wall-clock and noisy when other processes share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from facewarden.config.paths import default_models_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PHOTOS = {
    "anonymize": DATA / "wider-dev" / "images" / "0_Parade_marchingband_1_104.jpg",
    "idphoto": DATA / "idphoto-specs" / "demo" / "images" / "test0.jpg",
}
BANNED = ("numba", "llvmlite", "scipy", "scikit-image", "pymatting", "onnx", "rembg")


def build_runtime_venv(rev: str | None, workdir: Path) -> tuple[Path, float]:
    """A checkout of ``rev`` (or the working tree) synced with ``--no-dev``; returns the
    project dir and the seconds uv took."""
    project = workdir / "project"
    project.mkdir()
    files = ["pyproject.toml", "uv.lock", "README.md", "facewarden"]
    if rev:
        archive = subprocess.run(["git", "archive", rev, *files], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(project)], input=archive, check=True)
    else:
        for name in files:
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / name)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(project / ".venv")}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.perf_counter()
    subprocess.run(["uv", "sync", "--frozen", "--no-dev", "--quiet"], cwd=project, env=env, check=True)
    return project, time.perf_counter() - t0


def runtime_size(venv: Path) -> tuple[float, int, list[str]]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    names = [d.name.split("-")[0].lower().replace("_", "-") for d in site.glob("*.dist-info")]
    return total / 1e6, len(names), sorted(n for n in names if n in BANNED)


def clear_bytecode(venv: Path) -> None:
    """As after a fresh install: no compiled module of any package (uv compiles none)."""
    for cache in list(venv.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def fresh_models(src: Path, dst: Path) -> Path:
    """The installed model files only (hard links), without caches kept beside them (the old
    rembg path kept numba's compile cache in the models dir)."""
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if not f.is_file() or rel.parts[0] in (".numba-cache", "wheels") or rel.parts[0].startswith("."):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst / rel)
        except OSError:
            shutil.copy2(f, dst / rel)
    return dst


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def time_process(exe: Path, handler: str, models: Path, scratch: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and its children) of one
    ``process`` run; CPU time is the figure to trust on a machine shared with other work."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    cmd = [str(exe), "process", str(PHOTOS[handler]), "--handler", handler, "--out", str(out / "out"),
           "--state", str(out / "state"), "--models-dir", str(models)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or ": ok" not in proc.stdout:
        raise SystemExit(f"{handler} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, cpu


def time_run_to_ready(exe: Path, models: Path, scratch: Path) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(dir=scratch))
    watch, out = base / "in", base / "out"
    watch.mkdir()
    shutil.copy(PHOTOS["anonymize"], watch / "photo.jpg")
    cmd = [str(exe), "run", "--watch", str(watch), "--out", str(out), "--state", str(base / "state"),
           "--models-dir", str(models)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if '"daemon.started"' in line:
                started.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    ready = first = None
    try:
        while time.perf_counter() - t0 < 120 and (ready is None or first is None):
            if ready is None and started.is_set():
                ready = time.perf_counter() - t0
            if first is None and (out / "photo.jpg").exists():
                first = time.perf_counter() - t0
            if proc.poll() is not None:
                raise SystemExit("run exited early:\n" + "".join(lines))
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if ready is None or first is None:
        raise SystemExit("run did not become ready / write a result within 120 s")
    return ready, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="git commit to measure instead of the working tree")
    ap.add_argument("--venv", type=Path, help="measure this existing runtime venv (warm runs only)")
    ap.add_argument("--models-dir", type=Path, default=default_models_dir())
    ap.add_argument("--warm-runs", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the OS page cache before each cold run (root only; affects the whole machine)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    result: dict = {"rev": args.rev or "working tree"}
    with tempfile.TemporaryDirectory(prefix="fw-startup-") as tmp:
        scratch = Path(tmp)
        cold = args.venv is None
        if cold:
            project, sync_s = build_runtime_venv(args.rev, scratch)
            venv = project / ".venv"
            mb, count, banned = runtime_size(venv)
            result.update(runtime_mb=round(mb, 1), packages=count, banned_present=banned, uv_sync_s=round(sync_s, 1))
        else:
            venv = args.venv
        exe = venv / "bin" / "facewarden"
        # Hard links need the same file system as the models: a scratch folder beside them.
        models_tmp = Path(tempfile.mkdtemp(dir=args.models_dir.parent, prefix=".bench-models-"))
        try:
            models = fresh_models(args.models_dir, models_tmp)
            for handler in PHOTOS:
                if cold:  # each handler's first run on a fresh install: no bytecode, no caches
                    clear_bytecode(venv)
                    result["page_cache_dropped"] = args.drop_caches and drop_page_cache()
                    wall, cpu = time_process(exe, handler, models, scratch)
                    result[f"{handler}_cold_s"] = round(wall, 2)
                    result[f"{handler}_cold_cpu_s"] = round(cpu, 2)
                    shutil.rmtree(models_tmp)
                    models = fresh_models(args.models_dir, models_tmp)
                warm = [time_process(exe, handler, models, scratch) for _ in range(args.warm_runs)]
                result[f"{handler}_warm_s"] = round(statistics.median(w for w, _ in warm), 2)
                result[f"{handler}_warm_cpu_s"] = round(statistics.median(c for _, c in warm), 2)
            runs = [time_run_to_ready(exe, models, scratch) for _ in range(args.warm_runs)]
        finally:
            shutil.rmtree(models_tmp, ignore_errors=True)
        result["run_ready_warm_s"] = round(statistics.median(r for r, _ in runs), 2)
        result["run_first_result_warm_s"] = round(statistics.median(f for _, f in runs), 2)
    result["load_avg_1min"] = round(os.getloadavg()[0], 1)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    sys.exit(main())
