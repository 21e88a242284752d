"""Batch windows on a grid: when each channel's events are flushed as one frame.

The rule (docs/WINDOWS.md has the reasoning and the curve):

- Grid. Channel `c` has the phase `phi = frac(c * 0x9E3779B97F4A7C15 / 2**64) * L` (Fibonacci
  hashing: consecutive ids spread evenly) and the deadlines `phi + k * L`. The first event at an
  idle channel opens a window whose deadline is the first grid point strictly after `now`;
  `due(now)` closes every window with `deadline <= now`. So a busy channel is flushed every L ms
  however long a flush takes or however late `due` runs, an event waits at most L, and channels'
  flushes are spread over the period.
- Length L. `min_ms` for a channel whose rate is at or below `quiet_rate` (a frame per event is
  cheap); otherwise the shared `length_ms`, sized by the cost of flushing. The caller reports each
  flush pass with `observe_flush(now_ms, cost_ms)` (the CPU ms it spent). The scheduler keeps
  `load`, a time-weighted EWMA of cost_ms per wall ms, and `work`, the same EWMA of
  `load_sample * length_ms` (flush CPU per window period, nearly independent of L). The target is
  `clamp(work / flush_budget, min_ms, max_ms)`: the shortest window whose flush duty stays under
  the budget. `length_ms` moves to it only when it is more than 10% away or at a bound.
- Rate EWMA (it still decides quiet or not). Time-weighted: a span of `dt` ms gets weight
  `w = 1 - (1 - alpha) ** (dt / 1000)`, i.e. `w = -expm1(-k * dt)` with `k = -log1p(-alpha) / 1000`.
  On close after `elapsed` ms holding `events`: `rate += w(elapsed) * (events * 1000 / elapsed -
  rate)`; on wake after `idle` ms of silence: `rate *= exp(-k * idle)`. The load EWMAs use the same
  `w` over the span since the previous `observe_flush` (costs reported with no time passed are
  carried into the next span).

Defaults: min_ms 30, max_ms 150, quiet_rate 10 ev/s, alpha 0.9 (an EWMA keeps 10% of its value per
second: half-life ~301 ms), flush_budget 0.25 of a core. Times are a caller-supplied monotonic clock
in ms; nothing here reads a clock. Neither class is thread-safe; touch_many releases the GIL and any
other mutating call made meanwhile raises StreamcoreError.
"""

from typing import SupportsIndex, final

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

__all__ = ["AdaptiveWindow", "WindowScheduler"]

@disjoint_base  # a cdef class: it cannot share a subclass with another compiled base
class AdaptiveWindow:
    """The length rule for one channel: min_ms while quiet, else the length its flush load buys."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        *,
        quiet_rate: float = 10.0,
        alpha: float = 0.9,
        flush_budget: float = 0.25,
    ) -> None:
        """Validate: 0 < min_ms <= max_ms, 0 < quiet_rate, 0 < alpha < 1, 0 < flush_budget <= 1."""

    @property
    def length_ms(self) -> float:
        """Length of the next window, in ms (min_ms before any observation)."""

    @property
    def rate(self) -> float:
        """EWMA of the event rate, in events per second."""

    @property
    def load(self) -> float:
        """EWMA of the flush load: flush CPU ms per wall ms (1.0 is one core)."""

    def wake(self, idle_ms: float) -> float:
        """Decay the rate by an idle gap (as the channel wakes) and return the new window length."""

    def observe(self, events: SupportsIndex, elapsed_ms: float, idle_ms: float = 0.0) -> float:
        """Update the rate after a window (after idle_ms of silence); return the next length."""

    def observe_flush(self, cost_ms: float, elapsed_ms: float) -> float:
        """Count cost_ms of flush CPU spent over the last elapsed_ms; return the next length."""

@final
class WindowScheduler:
    """Grid windows for many channels keyed by int64 id; flushing costs O(active channels)."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        *,
        quiet_rate: float = 10.0,
        alpha: float = 0.9,
        flush_budget: float = 0.25,
    ) -> None:
        """Validate the rule, as AdaptiveWindow does; start with no channels."""

    def touch(self, channel: SupportsIndex, now_ms: float, events: SupportsIndex = 1) -> bool:
        """Count events on a channel; open its window if it was idle (then return True)."""

    def touch_many(self, channels: npt.NDArray[np.int64] | memoryview, now_ms: float) -> int:
        """Count one event per entry of an int64 array of channel ids; return windows opened."""

    def due(self, now_ms: float) -> npt.NDArray[np.int64]:
        """Close and return (int64, in deadline order) every channel whose deadline is <= now_ms."""

    def due_list(self, now_ms: float) -> list[int]:
        """Close and return, as a list of ints in deadline order, every channel due by now_ms."""

    def observe_flush(self, now_ms: float, cost_ms: float) -> None:
        """Count cost_ms of flush CPU spent up to now_ms; the shared length follows the load."""

    def next_deadline(self) -> float | None:
        """Return the earliest open deadline (ms), or None when no window is open."""

    def window_ms(self, channel: SupportsIndex) -> float:
        """Return the grid period of its open window, or of its next one (KeyError if unknown)."""

    def rate(self, channel: SupportsIndex) -> float:
        """Return the channel's event-rate EWMA in events/s (KeyError if unknown)."""

    def is_active(self, channel: SupportsIndex) -> bool:
        """Return True when the channel has an open window (False if unknown)."""

    def forget(self, channel: SupportsIndex) -> bool:
        """Drop a channel's state and any open window; return False if it was unknown."""

    def __len__(self) -> int:
        """Return the number of active channels (open windows)."""

    @property
    def channels(self) -> npt.NDArray[np.int64]:
        """Known channel ids (active or idle), sorted, as an int64 array."""

    @property
    def nbytes(self) -> int:
        """Bytes of C memory held (channel array, index, heap and due() buffer)."""

    @property
    def windows_opened(self) -> int:
        """Windows opened since creation."""

    @property
    def windows_closed(self) -> int:
        """Windows closed by due() since creation (forget() drops a window without closing it)."""

    @property
    def min_ms(self) -> float:
        """Shortest window, in ms."""

    @property
    def max_ms(self) -> float:
        """Longest window, in ms."""

    @property
    def quiet_rate(self) -> float:
        """Rate (events/s) at or below which a window gets min_ms."""

    @property
    def flush_budget(self) -> float:
        """Flush CPU per wall time (1.0 is one core) the shared length aims at."""

    @property
    def load(self) -> float:
        """EWMA of the flush load: flush CPU ms per wall ms (1.0 is one core)."""

    @property
    def length_ms(self) -> float:
        """The shared window length of channels above quiet_rate, in ms."""

    @property
    def alpha(self) -> float:
        """Weight of one second of observation in the rate EWMA."""
