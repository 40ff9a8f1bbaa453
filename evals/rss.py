"""Per-query peak resident memory of this process.

The process's RSS high-water mark (``VmHWM``, read by
:func:`edgescale.runtime.memory.peak_rss_bytes`) only ever grows, so after the
first query every later one would report the run's maximum. On Linux the mark
can be reset (``echo 5 > /proc/self/clear_refs``, since Linux 4.0): reset
before a query, read after it, and the figure is that query's own peak (with
the loaded weights, which stay resident). Where the reset is not allowed the
figure is the peak so far, and records say so (``rss_per_query: false``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgescale.runtime.memory import peak_rss_bytes

_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class PeakRss:
    bytes: int
    per_query: bool  # True: the high-water mark was reset before the query


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark; False where the OS does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def current_peak(was_reset: bool) -> PeakRss:
    return PeakRss(peak_rss_bytes(), was_reset)
