"""The Handler seam and the handler registry.

A handler does no I/O: it receives an already-decoded, EXIF-oriented image and validated
params, and returns encoded outputs plus facts for the audit record. It raises
``InputRejected`` (permanent, with a reason code) or ``ProcessingFailed`` (retryable);
it never writes anything itself, which is what lets the worker fail closed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from facewarden.handlers.imageio import DecodedImage
from facewarden.handlers.params import ParamSchema
from facewarden.models.protocols import ModelId
from facewarden.registry import Registry


@dataclass(frozen=True, slots=True)
class Output:
    """One result file. ``suffix`` is appended to the input's key stem ('' = same name)."""

    data: bytes
    extension: str  # with dot, e.g. ".jpg", ".json"
    content_type: str
    suffix: str = ""


@dataclass(slots=True)
class HandlerResult:
    outputs: list[Output]
    #: Facts for the audit record, e.g. {"faces": 3}. Never embeddings or face pixels.
    facts: dict[str, Any] = field(default_factory=dict)
    models: list[ModelId] = field(default_factory=list)
    #: Data for the handler's own ``commit`` step (e.g. embeddings to add to the gallery).
    #: The worker never logs it and never puts it in an audit record.
    private: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler may know about its environment: where verified models live, and
    (for handlers that need it) a read-only view supplied by the worker, e.g. the gallery."""

    models_dir: Path
    services: Mapping[str, Any] = field(default_factory=dict)


class Handler(abc.ABC):
    """A pure function from (image, params) to outputs and facts, plus model warm-up."""

    name: ClassVar[str]
    #: The handler's params: validates them and documents them (`facewarden handlers`).
    schema: ClassVar[ParamSchema]

    @property
    def beside_suffix(self) -> str:
        """Added to an input's stem when the result is written beside it
        (``facewarden process`` without ``--out``): photo.jpg -> photo_idphoto.jpg."""
        return f"_{self.name}"

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Normalises params (types, defaults) or raises ``InputRejected('params.invalid')``.

        The normalised dict is what goes into the idempotency key, so equal meaning gives
        equal keys.
        """
        return self.schema.validate(params)

    def warm_up(self, ctx: HandlerContext, params: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        """Loads models for these params; called once per worker process before work."""

    @abc.abstractmethod
    def run(self, image: DecodedImage, params: Mapping[str, Any], ctx: HandlerContext) -> HandlerResult: ...


class CommittingHandler(Handler):
    """A handler whose result changes local state beyond output files (enroll adds to the
    gallery). The worker calls ``commit`` after the outputs are durable and before the
    audit record is appended; it must be idempotent (a retried job commits again)."""

    @abc.abstractmethod
    def commit(self, result: HandlerResult, params: Mapping[str, Any], ctx: HandlerContext,
               *, input_sha256: str, input_key: str) -> None: ...


#: Handlers by name; each handler file registers its class (or a factory) on import.
HANDLERS: Registry[Callable[[], Handler]] = Registry("handler", "facewarden.handlers",
                                                     ("anonymize", "idphoto", "enroll", "detect"))
_INSTANCES: dict[str, Handler] = {}


def register(name: str, factory: Callable[[], Handler]) -> None:
    HANDLERS.register(name, factory)


def names() -> list[str]:
    return HANDLERS.names()


def get(name: str) -> Handler:
    """One instance per process, so models a handler caches load once per worker.
    Raises ``UnknownBackend`` (code ``handler.unknown``) listing the known names."""
    if name not in _INSTANCES:
        _INSTANCES[name] = HANDLERS.get(name)()
    return _INSTANCES[name]
