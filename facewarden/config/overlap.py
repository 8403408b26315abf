"""Outputs never land where inputs are taken from: checked once, at start-up.

A *location* is a store's root (a folder, or an S3 endpoint + bucket + prefix) plus a key
prefix. An output location (a route's target + prefix, its quarantine store, its processed
store when originals are moved) that is equal to, inside, or contains a location a source
watches would feed results back in as inputs (or replace the originals): that is a
configuration error naming both. The one way out is a distinct prefix the watching source
ignores (a folder source's `ignore` patterns, an S3 source's `prefixes`/`ignore`).

Sources that are told which object to take (dms-webhook, amqp-jobs) watch nothing, but a
route of theirs must still not write onto the stores it takes inputs from, except under a
sub-prefix (results beside the originals, never over them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Location:
    space: str  # "file" or "s3:<endpoint>/<bucket>"
    parts: tuple[str, ...]

    def contains(self, other: Location) -> bool:
        return self.space == other.space and other.parts[:len(self.parts)] == self.parts

    def show(self) -> str:
        if self.space == "file":
            return "/" + "/".join(self.parts)
        return f"{self.space.removeprefix('s3:')}/{'/'.join(self.parts)}".rstrip("/")


def _split(prefix: str) -> tuple[str, ...]:
    return tuple(p for p in prefix.split("/") if p)


def store_location(store: Any, prefix: str = "") -> Location:
    if store.type == "local":
        root = Path(os.path.realpath(Path(store.root).expanduser()))
        return Location("file", tuple(p for p in root.parts if p != "/") + _split(prefix))
    endpoint = (store.endpoint_url or "aws").rstrip("/")
    return Location(f"s3:{endpoint}/{store.bucket}", _split(store.prefix) + _split(prefix))


def _outputs(i: int, route: Any) -> list[tuple[str, str, str]]:
    """(what, store, prefix) for every place a route writes."""
    outs = [(f"routes[{i}].target", route.target, route.prefix),
            (f"routes[{i}].quarantine_store", route.quarantine_store, "")]
    if route.originals == "move":
        outs.append((f"routes[{i}].processed_store", route.processed_store, route.processed_prefix))
    return outs


def _describe(what: str, store: str, prefix: str, loc: Location) -> str:
    pre = f" prefix {prefix!r}" if prefix.strip("/") else ""
    return f"{what} (store {store!r}{pre}: {loc.show()})"


def find_overlaps(settings: Any) -> list[str]:
    """One sentence per output location that overlaps an input location."""
    stores = settings.all_stores()
    problems: list[str] = []
    sources = {s.name: s for s in settings.sources}
    for i, route in enumerate(settings.routes):
        for what, out_store, out_prefix in _outputs(i, route):
            if out_store not in stores:
                continue  # named in a cross-reference error already
            out_loc = store_location(stores[out_store], out_prefix)
            for src in settings.sources:
                for in_store in src.watched_stores():
                    if in_store not in stores:
                        continue
                    in_loc = store_location(stores[in_store])
                    if in_loc.contains(out_loc):
                        rel = "/".join(out_loc.parts[len(in_loc.parts):])
                        if rel and src.ignores_all_under(in_store, rel):
                            continue
                        how = "is" if not rel else "is inside"
                    elif out_loc.contains(in_loc):
                        how = "contains"
                    else:
                        continue
                    problems.append(
                        f"{_describe(what, out_store, out_prefix, out_loc)} {how} the location source "
                        f"{src.name!r} watches (store {in_store!r}: {in_loc.show()}): results would be "
                        "picked up again as inputs. Write results elsewhere, or under a prefix the "
                        "source ignores (its `ignore` patterns" +
                        (", `prefixes`" if hasattr(src, "prefixes") else "") + ")")
            src = sources.get(route.source)
            if src is None or src.watched_stores():
                continue
            for in_store in src.input_stores([]):
                if in_store not in stores:
                    continue
                in_loc = store_location(stores[in_store])
                if out_loc.contains(in_loc):
                    how = "is" if out_loc == in_loc else "contains"
                    problems.append(
                        f"{_describe(what, out_store, out_prefix, out_loc)} {how} the input location of "
                        f"source {src.name!r} (store {in_store!r}: {in_loc.show()}): a result could "
                        "replace an original. Write results to another store or under a `prefix`")
    return list(dict.fromkeys(problems))
