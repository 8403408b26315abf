"""Test doubles shared by test_pipeline and test_process_safety: an in-memory Store and a
stub handler. They stand in for model-backed handlers and real folders only to keep the
pipeline's branch tests fast; the real handlers and stores run in the other test files."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image

from facewarden.errors import InputRejected
from facewarden.handlers import base as handlers
from facewarden.handlers.base import CommittingHandler, Handler, HandlerContext, HandlerResult, Output
from facewarden.handlers.imageio import DecodedImage
from facewarden.storage.base import ObjectInfo, Store, safe_key


class MemoryStore(Store):
    """A dict as a store (atomic by construction)."""

    def __init__(self, name: str):
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}

    def get(self, key: str) -> bytes:
        try:
            return self.objects[safe_key(key)]
        except KeyError:
            raise FileNotFoundError(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        key = safe_key(key)
        if key not in self.objects:
            return None
        return ObjectInfo(key, len(self.objects[key]), str(self.versions[key]))

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        key = safe_key(key)
        self.objects[key] = bytes(data)
        self.versions[key] = self.versions.get(key, 0) + 1

    def delete(self, key: str) -> None:
        self.objects.pop(safe_key(key), None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]), str(self.versions[key]))

    def uri(self, key: str) -> str:
        return f"mem://{self.name}/{key}"


class StubHandler(Handler):
    """Output = a function of the pixels (deterministic, like the real handlers), or
    of a counter with ``stamp`` (like enroll's receipts). ``fail_next`` makes the next
    run reject the input; ``crash_next`` makes it fail in a retryable way."""

    name = "stub"

    def __init__(self) -> None:
        self.runs = 0
        self.fail_next = False
        self.crash_next = False

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(params) - {"level", "sheet", "stamp"}
        if unknown:
            raise InputRejected("params.invalid", f"unknown parameter(s): {sorted(unknown)}")
        return {"level": int(params.get("level", 1)), "sheet": bool(params.get("sheet", False)),
                "stamp": bool(params.get("stamp", False))}

    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult:
        self.runs += 1
        if self.fail_next:
            self.fail_next = False
            raise InputRejected("face.none", "no face found")
        if self.crash_next:
            self.crash_next = False
            raise RuntimeError("the model fell over")
        body = hashlib.sha256(image.rgb.tobytes()).hexdigest() + f":{params['level']}"
        if params["stamp"]:
            body += f":run{self.runs}"
        outputs = [Output(body.encode(), ".jpg", "image/jpeg")]
        if params["sheet"]:
            outputs.append(Output(b"sheet:" + body.encode(), ".jpg", "image/jpeg", suffix="-sheet"))
        return HandlerResult(outputs, facts={"faces": 1})


class StubCommitter(StubHandler, CommittingHandler):
    name = "stub-commit"

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[str] = []

    def commit(self, result: HandlerResult, params: Mapping[str, Any], ctx: HandlerContext, *,
               input_sha256: str, input_key: str) -> None:
        self.commits.append(input_key)


STUB = StubHandler()
COMMITTER = StubCommitter()
handlers.register("stub", lambda: STUB)
handlers.register("stub-commit", lambda: COMMITTER)


def _png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PHOTO = _png(1)
OTHER = _png(2)


def reset_stubs() -> None:
    for h in (STUB, COMMITTER):
        h.runs, h.fail_next, h.crash_next = 0, False, False
    COMMITTER.commits.clear()
