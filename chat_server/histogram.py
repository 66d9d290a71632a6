"""A histogram cheap enough for the fan-out path: a count per bucket, read by /metrics.

prometheus_client's own Histogram takes a lock per observation; the fan-out observes once per
message (weighted by how many streams got it), so plain counters in the event loop suffice.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

# Upper bounds, in seconds: from a write made during the fan-out itself (microseconds) to a
# stream whose socket is backed up (seconds).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is above every bound
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count `times` observations of `value` (a value equal to a bound falls in its bucket)."""
        if times > 0:
            self.counts[bisect.bisect_left(self.bounds, value)] += times
            self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with "+Inf", as Prometheus wants."""
        out, running = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
