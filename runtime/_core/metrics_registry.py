"""This process's application metrics (runtime.util.metrics records into it; the core worker
reports it to the node manager). A module of its own with nothing but the standard library, so
that joining a cluster does not import the metrics API, or runtime.util, to hook it up."""

from __future__ import annotations

import threading
from typing import Any, Callable


class _Registry:
    """Every metric of this process, by name; `snapshot()` is what is reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.families: dict[str, dict] = {}
        self.dirty = False
        self.on_dirty: Callable[[], None] | None = None  # set by the core worker once joined

    def family(self, name: str, kind: str, description: str, tag_keys: tuple, boundaries: list | None) -> dict:
        """The family of that name; declared again another way (a notebook cell run again with
        new tag keys), a new family replaces it, and metric objects of the old one record into
        nothing."""
        with self.lock:
            fam = self.families.get(name)
            if fam is not None and (fam["kind"], fam["tag_keys"], fam["boundaries"]) == (kind, list(tag_keys),
                                                                                       boundaries):
                return fam
            fam = self.families[name] = {"name": name, "kind": kind, "description": description,
                                         "tag_keys": list(tag_keys), "boundaries": boundaries, "samples": {}}
            notify = not self.dirty
            self.dirty = True
        if notify and self.on_dirty is not None:
            self.on_dirty()
        return fam

    def record(self, fam: dict, key: tuple, update: Callable[[Any], Any]) -> None:
        with self.lock:
            samples = fam["samples"]
            samples[key] = update(samples.get(key))
            notify = not self.dirty
            self.dirty = True
        if notify and self.on_dirty is not None:
            self.on_dirty()

    def snapshot(self) -> list | None:
        """The families with their samples (msgpack-able), or None when nothing changed since the
        last snapshot."""
        with self.lock:
            if not self.dirty:
                return None
            self.dirty = False
            return [{**{k: v for k, v in fam.items() if k != "samples"},
                     "samples": [[list(key), list(v) if isinstance(v, list) else v]
                                 for key, v in fam["samples"].items()]}
                    for fam in self.families.values() if fam["samples"]]


registry = _Registry()
