"""`DataContext`: the execution settings (Ray's `ray.data.context.DataContext`).

Its own module, at the bottom of the package, because the plan, the progress bars, the
readers and the grouping all read it: none of them should need dataset.py to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class DataContext:
    """Execution settings (Ray's `DataContext.get_current()`)."""

    max_blocks_in_flight: int = 0  # 0: twice the cluster's CPUs
    target_max_block_rows: int = 200_000  # from_items / range split into blocks of about this size
    enable_progress_bars: bool = True  # progress of long consumptions (progress.py); Ray's name
    progress_bar_min_seconds: float = 1.0  # shown only once the work has taken this long

    _current: ClassVar[DataContext | None] = None

    @classmethod
    def get_current(cls) -> DataContext:
        if cls._current is None:
            cls._current = cls()
        return cls._current
