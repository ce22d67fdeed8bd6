"""Application metrics with Ray's API: `Counter`, `Gauge`, `Histogram`.

A metric records into this process's registry (one lock, a dict per metric): recording costs a
dict update and never waits on the network. A process that has joined a cluster sends the
registry's values to its node manager every `metrics_report_interval_s` while they change, and
once more when it shuts down; the node manager serves them, with its system metrics, in
Prometheus text on its metrics export port (docs/observability.md). Values are cumulative, so a
lost or repeated report changes nothing.

The book (Ray 1.x) says metrics are not picklable; Ray 2.60's are, by name: a metric sent to a
task is built again there, without its default tags, and records into that process's
registry. Ours do the same, so code written for either works (docs/observability.md).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable

__all__ = ["Counter", "Gauge", "Histogram", "Metric"]

# Prometheus's rule for metric names (prometheus_client's METRIC_NAME_RE), as Ray checks it.
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
TAG_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


from .._core.metrics_registry import registry


class Metric:
    """What Counter, Gauge and Histogram share: a name, tag keys, default tags."""

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None) -> None:
        if len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        # As Ray 2.60: a name Prometheus cannot take is a warning, and the metric records nothing.
        self._discard = not METRIC_NAME_RE.match(name)
        if self._discard:
            warnings.warn(f"Invalid metric name: {name}. Metric will be discarded and data will not be collected "
                          "or published. Metric names can only contain letters, numbers, _, and :. Metric names "
                          "cannot start with numbers.", UserWarning, stacklevel=3)
        tag_keys = tag_keys or ()
        if not isinstance(tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(tag_keys)}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
            if not TAG_KEY_RE.match(key):
                raise ValueError(f"Invalid tag key {key!r}: tag keys (Prometheus label names) may contain only "
                                 "letters, digits and '_', and may not start with a digit.")
        self._name, self._description, self._tag_keys = name, description, tag_keys
        self._default_tags: dict[str, str] = {}
        self._family = None if self._discard else registry.family(name, self._kind, description, tag_keys,
                                                                  self._boundaries())

    def _boundaries(self) -> list | None:
        return None

    @property
    def info(self) -> dict:
        """Ray's `Metric.info`: name, description, tag keys and default tags."""
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": self._default_tags}

    def set_default_tags(self, default_tags: dict[str, str]) -> Metric:
        """Tags used when a record call does not give them. Returns the metric (Ray's chaining)."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}. This metric's tag keys are {self._tag_keys}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = dict(default_tags)
        return self

    def _key(self, tags: dict[str, str] | None) -> tuple:
        """The values of this metric's tag keys, in order: the call's tags over the default ones."""
        final = {**self._default_tags, **(tags or {})}
        for key, val in final.items():
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}: declare it in tag_keys when creating metric "
                                 f"{self._name!r} (its tag keys are {self._tag_keys}).")
        missing = [k for k in self._tag_keys if k not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}. Pass them in tags= or set them "
                             "with set_default_tags().")
        return tuple(final[k] for k in self._tag_keys)

    def _record(self, tags: dict[str, str] | None, update: Callable[[Any], Any]) -> None:
        key = self._key(tags)
        if not self._discard:
            registry.record(self._family, key, update)

    @staticmethod
    def _number(value: Any) -> float:
        if not isinstance(value, (int, float)):
            raise TypeError(f"value must be int or float, got {type(value)}.")
        return float(value)

    def __reduce__(self) -> Any:
        return type(self), (self._name, self._description, self._tag_keys)


class Counter(Metric):
    """A cumulative count (Prometheus `counter`, exported as `ray_<name>_total`)."""

    _kind = "counter"

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        value = self._number(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self._record(tags, lambda old: (old or 0.0) + value)


class Gauge(Metric):
    """The last value set (Prometheus `gauge`)."""

    _kind = "gauge"

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        if value is None:  # Ray ignores a None value
            return
        value = self._number(value)
        self._record(tags, lambda old: value)


class Histogram(Metric):
    """Counts of observed values per bucket (Prometheus `histogram`, upper bounds `boundaries`)."""

    _kind = "histogram"

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None) -> None:
        if not boundaries:
            raise ValueError("boundaries argument should be provided when using the Histogram class. "
                             'e.g., Histogram("name", boundaries=[1.0, 2.0])')
        for i, b in enumerate(boundaries):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries}. Use positive "
                                 "values for the arguments.")
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries}.")
        self.boundaries = [float(b) for b in boundaries]
        super().__init__(name, description, tag_keys)

    def _boundaries(self) -> list | None:
        return self.boundaries

    def __reduce__(self) -> Any:
        return Histogram, (self._name, self._description, self.boundaries, self._tag_keys)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        value = self._number(value)
        i = next((i for i, b in enumerate(self.boundaries) if value <= b), len(self.boundaries))

        def add(old: list | None) -> list:
            # [count per bucket (the last one above every boundary)..., sum, count]
            row = old or [0.0] * (len(self.boundaries) + 3)
            row[i] += 1
            row[-2] += value
            row[-1] += 1
            return row

        self._record(tags, add)

    @property
    def info(self) -> dict:
        return {**super().info, "boundaries": self.boundaries}
