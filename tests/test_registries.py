"""Every kind of backend registers itself in its own file; an unknown name raises one
error type (UnknownBackend, a ConfigError) that lists the known names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from facewarden.daemon.jobs import Job
from facewarden.daemon.queues.base import QUEUES, Lease, Queue
from facewarden.daemon.sources import SourceContext, build_source
from facewarden.errors import ConfigError, UnknownBackend
from facewarden.handlers import base as handlers
from facewarden.storage.base import STORES
from facewarden.storage.stores import open_store


def test_builtin_backends_are_registered():
    assert {"local", "s3"} <= set(STORES.names())
    assert {"sqlite", "rabbitmq"} <= set(QUEUES.names())
    assert {"anonymize", "idphoto", "enroll", "verify"} <= set(handlers.names())


@pytest.mark.parametrize(("lookup", "code", "known"), [
    (lambda: handlers.get("blurr"), "handler.unknown", "anonymize"),
    (lambda: open_store("x", SimpleNamespace(type="ftp")), "store.unknown", "local"),
    (lambda: QUEUES.get("kafka"), "queue.unknown", "sqlite"),
])
def test_an_unknown_name_raises_one_error_type_listing_the_known_names(lookup, code, known):
    with pytest.raises(UnknownBackend) as info:
        lookup()
    assert isinstance(info.value, ConfigError)
    assert info.value.code == code and known in info.value.known and known in info.value.message


def test_an_unknown_source_type_is_a_config_error_naming_the_nearest_and_known_types():
    # Source types are checked when the config is validated (strict union), before any registry.
    with pytest.raises(ConfigError) as info:
        build_source({"type": "folderr", "name": "in"}, SourceContext({}, None))
    assert "did you mean folder?" in info.value.message and "s3-sqs" in info.value.message


def test_a_new_backend_is_one_registration():
    class Null(Queue):
        def put(self, job: Job, *, dedup: str | None = None) -> bool:
            return True

        def get(self, worker: str, timeout: float) -> Lease | None:
            return None

        def ack(self, lease: Lease) -> None: ...

        def retry(self, lease: Lease, *, reason: dict[str, str], delay: float) -> None: ...

        def depth(self) -> int:
            return 0

    QUEUES.register("null-test", lambda settings: Null())
    queue = QUEUES.get("null-test")(None)
    # The base class declares every capability the daemon uses, with safe defaults.
    assert queue.release_all(reason={}) == 0 and queue.release_owner("w", reason={}) == 0
    assert queue.leases_older_than(1.0) == [] and queue.job_state("x") is None
    assert queue.dead_letter_depth() is None and queue.reachable() is True
    queue.close()
