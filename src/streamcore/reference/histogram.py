"""Readable specification of streamcore.Histogram: same layout and rules, plain Python math.

For tests and benchmarks only; the package never imports it at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SUB_BITS = 6
SUB = 1 << SUB_BITS  # linear sub-buckets per power of two


def bucket_key(v: float) -> int:
    """Key of the bucket holding v: (biased exponent, top 6 mantissa bits), as bits(v) >> 46."""
    m, e = math.frexp(v)  # v = m * 2**e, m in [0.5, 1)
    return (e + 1021) * SUB + int(m * 2 * SUB)


def bucket_bounds(key: int) -> tuple[float, float]:
    """[lower, upper) of a bucket key."""
    e = (key >> SUB_BITS) - 1023 - SUB_BITS
    k = key & (SUB - 1)
    return math.ldexp(SUB + k, e), math.ldexp(SUB + k + 1, e)


class ReferenceHistogram:
    """Pure-Python Histogram with the compiled one's semantics (not its speed)."""

    def __init__(self, lowest: float = 1e-6, highest: float = 3600.0) -> None:
        if not (0.0 < lowest < highest and math.isfinite(highest)):
            raise ValueError(f"need 0 < lowest < highest, finite; got {lowest!r}, {highest!r}")
        self.lowest = float(lowest)
        self.highest = float(highest)
        self.base = bucket_key(self.lowest)
        self.nslots = bucket_key(self.highest) - self.base + 3  # + underflow + overflow
        self.reset()

    def reset(self) -> None:
        self.counts = [0] * self.nslots
        self.count = 0
        self.sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def min(self) -> float:
        return self._min if self.count else 0.0

    @property
    def max(self) -> float:
        return self._max if self.count else 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def slot(self, v: float) -> int:
        if v < self.lowest:
            return 0
        if v > self.highest:
            return self.nslots - 1
        return bucket_key(v) - self.base + 1

    def record(self, v: float) -> None:
        if not (math.isfinite(v) and v >= 0.0):
            raise ValueError(f"value must be finite and non-negative, got {v!r}")
        v = v + 0.0  # -0.0 -> 0.0
        self.counts[self.slot(v)] += 1
        self.count += 1
        self.sum += v
        self._min = min(self._min, v)
        self._max = max(self._max, v)

    def record_many(self, values: Iterable[float]) -> None:
        values = [float(v) for v in values]
        for v in values:
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"value must be finite and non-negative, got {v!r}")
        for v in values:
            self.record(v)

    def merge(self, other: ReferenceHistogram) -> None:
        assert (self.lowest, self.highest) == (other.lowest, other.highest)
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum += other.sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def rep(self, slot: int) -> float:
        """Reported value: the bucket midpoint within [lowest, highest], clamped to [min, max]."""
        if slot == 0:
            r = self.lowest
        elif slot == self.nslots - 1:
            r = self._max
        else:
            lo, hi = bucket_bounds(self.base + slot - 1)
            r = (max(lo, self.lowest) + min(hi, self.highest)) * 0.5
        return min(max(r, self._min), self._max)

    def percentile(self, q: float) -> float:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be in [0, 100], got {q!r}")
        if self.count == 0:
            return 0.0
        x = q * self.count / 100.0
        rank = math.ceil(x)
        if rank - x > 1.0 - 1e-12 * x:  # float noise above an integer: 99.9 * 3000 / 100
            rank -= 1
        rank = min(max(rank, 1), self.count)  # nearest rank
        if rank == 1:
            return self._min  # the extreme ranks are known exactly
        if rank == self.count:
            return self._max
        cum = 0
        for i, c in enumerate(self.counts):
            cum += c
            if cum >= rank:
                return self.rep(i)
        raise AssertionError("counts do not sum to count")

    def percentiles(self, qs: Iterable[float]) -> list[float]:
        return [self.percentile(q) for q in qs]

    def cumulative_counts(self, edges: Sequence[float]) -> list[int]:
        """Values whose slot's reported value is <= each edge."""
        return [
            sum(c for i, c in enumerate(self.counts) if c and self.rep(i) <= edge) for edge in edges
        ]
