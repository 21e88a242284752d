"""Log-bucketed latency histogram (seconds), relative error <= 1/128 in [lowest, highest]."""

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Final, Self

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

MAGIC: Final[bytes]
VERSION: Final[int]

@disjoint_base
class Histogram:
    """Fixed-memory HDR-style histogram: 64 linear sub-buckets per power of two."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(cls, lowest: float = 1e-6, highest: float = 3600.0) -> Self:
        """Create an empty histogram resolving [lowest, highest] to 1/128 relative error."""
    def record(self, value: float) -> None:
        """Record one finite, non-negative value in O(1)."""
    def record_many(self, values: Any) -> None:
        """Record a C-contiguous float64 buffer (or list) with the GIL released; all or nothing."""
    def merge(self, other: Histogram) -> None:
        """Add another histogram with the same layout into this one."""
    def reset(self) -> None:
        """Forget every recorded value; keep the layout."""
    def copy(self) -> Histogram:
        """Return an independent copy."""
    @property
    def count(self) -> int:
        """Number of recorded values."""
    @property
    def sum(self) -> float:
        """Sum of the recorded values (not bucketed)."""
    @property
    def min(self) -> float:
        """Exact smallest recorded value; 0.0 if empty."""
    @property
    def max(self) -> float:
        """Exact largest recorded value; 0.0 if empty."""
    @property
    def mean(self) -> float:
        """sum / count; 0.0 if empty."""
    @property
    def nbytes(self) -> int:
        """Bytes held by the bucket counts (16256 for the default layout)."""
    @property
    def lowest(self) -> float:
        """Smallest resolved value; smaller values count in the underflow bucket."""
    @property
    def highest(self) -> float:
        """Largest resolved value; larger values count in the overflow bucket."""
    def percentile(self, q: float) -> float:
        """Return the nearest-rank q-th percentile, q in [0, 100]; 0.0 if empty."""
    def percentiles(self, qs: Iterable[float]) -> list[float]:
        """Return several percentiles in one pass, in the order given."""
    def cumulative_counts(self, edges: Sequence[float]) -> list[int]:
        """Count values whose bucket's reported value is <= each strictly increasing edge."""
    def buckets(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint64]]:
        """Return (upper bounds, counts) of the non-empty buckets, ascending."""
    def to_bytes(self) -> bytes:
        """Serialise to the versioned sparse blob of docs/HISTOGRAM.md."""
    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Histogram:
        """Decode a to_bytes() blob; CorruptDataError says what is wrong."""
    def __eq__(self, other: object, /) -> bool:
        """Same layout, count, min, max and bucket counts (sum is not compared)."""
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
