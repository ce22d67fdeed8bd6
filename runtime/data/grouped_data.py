"""Ray's module path for grouped datasets (`from ray.data.grouped_data import GroupedData`)."""

from .grouped import GroupedData

__all__ = ["GroupedData"]
