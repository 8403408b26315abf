"""Routes turn an Event into a Job: which handler, which params, which target."""

from __future__ import annotations

import fnmatch
from typing import Any

import structlog

from facewarden.config.schema import RouteConfig, Settings
from facewarden.daemon.jobs import Event, Job
from facewarden.video.media import media_of_name

log = structlog.get_logger("facewarden.routing")


class Router:
    def __init__(self, settings: Settings):
        self.routes = list(settings.routes)
        self.stores = set(settings.all_stores())

    def match(self, event: Event) -> RouteConfig | None:
        for route in self.routes:
            if route.source == event.source and fnmatch.fnmatchcase(event.key, route.match) \
                    and route.media in ("any", media_of_name(event.key)):
                return route
        return None

    def route(self, event: Event) -> Job | None:
        route = self.match(event)
        if route is None:
            log.info("event.unrouted", source=event.source, store=event.store)
            return None
        handler, params, target, prefix = route.handler, dict(route.params), route.target, route.prefix
        hints: dict[str, Any] = dict(event.hints)
        if route.allow_overrides:
            handler = hints.pop("handler", handler)
            params = {**params, **(hints.pop("params", None) or {})}
            wanted = hints.pop("target", None)
            if wanted is not None:
                if wanted not in self.stores:
                    log.warning("event.bad_target", source=event.source, target=wanted)
                    return None
                target = wanted
            prefix = hints.pop("target_prefix", prefix)
        hints.setdefault("event_at", event.seen_at)
        hints.setdefault("source", event.source)
        if event.version:
            hints.setdefault("version", event.version)
        return Job(handler=handler, params=params, store=event.store, key=event.key, target=target,
                   target_prefix=prefix, originals=route.originals, processed_store=route.processed_store,
                   processed_prefix=route.processed_prefix, quarantine_store=route.quarantine_store,
                   strip_prefix=route.strip_prefix, hints=hints,
                   **({"id": hints.pop("job_id")} if "job_id" in hints else {}))
