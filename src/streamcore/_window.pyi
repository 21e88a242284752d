"""Adaptive batch windows: how long a channel's events wait before they are flushed as one frame.

The rule (docs/WINDOWS.md has the reasoning):

- Each channel keeps `rate`, an EWMA of its event rate in events/s, weighted by time: a span of
  `dt` ms gets weight `w = 1 - (1 - alpha) ** (dt / 1000)`, i.e. `w = -expm1(-k * dt)` with
  `k = -log1p(-alpha) / 1000`.
- When a window closes after `elapsed` ms holding `events`:
  `rate += w(elapsed) * (events * 1000 / elapsed - rate)`.
- When an idle channel wakes after `idle` ms of silence: `rate *= exp(-k * idle)` (silence is a
  window with no events), and only then is its window sized.
- Window length: `min_ms` if `rate <= quiet_rate`, `max_ms` if `rate >= busy_rate`, else
  `min_ms + (max_ms - min_ms) * log(rate / quiet_rate) / log(busy_rate / quiet_rate)` (computed as
  `(log(rate) - log(quiet_rate)) / (log(busy_rate) - log(quiet_rate))`), never above `max_ms`.
- A window opens on the first event at an idle channel (deadline = now + length) and closes in the
  first `due(now)` with `now >= deadline`; events that arrive meanwhile count in it.

Defaults: min_ms 30, max_ms 150, quiet_rate 10 ev/s, busy_rate 1000 ev/s, alpha 0.9 (the rate keeps
10% of its value per second of silence: half-life ~301 ms). Times are a caller-supplied monotonic
clock in ms; nothing here reads a clock. Neither class is thread-safe; touch_many releases the GIL
and any other mutating call made meanwhile raises StreamcoreError.
"""

from typing import SupportsIndex, final

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

__all__ = ["AdaptiveWindow", "WindowScheduler"]

@disjoint_base  # a cdef class: it cannot share a subclass with another compiled base
class AdaptiveWindow:
    """The window rule for one channel: an EWMA of its event rate mapped onto [min_ms, max_ms]."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        quiet_rate: float = 10.0,
        busy_rate: float = 1000.0,
        alpha: float = 0.9,
    ) -> None:
        """Validate the rule (0 < min_ms <= max_ms, 0 < quiet_rate < busy_rate, 0 < alpha < 1)."""

    @property
    def length_ms(self) -> float:
        """Length of the next window, in ms (min_ms before any observation)."""

    @property
    def rate(self) -> float:
        """EWMA of the event rate, in events per second."""

    def wake(self, idle_ms: float) -> float:
        """Decay the rate by an idle gap (as the channel wakes) and return the new window length."""

    def observe(self, events: SupportsIndex, elapsed_ms: float, idle_ms: float = 0.0) -> float:
        """Update the rate after a window (after idle_ms of silence); return the next length."""

@final
class WindowScheduler:
    """Adaptive windows for many channels keyed by int64 id; flushing costs O(active channels)."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        quiet_rate: float = 10.0,
        busy_rate: float = 1000.0,
        alpha: float = 0.9,
    ) -> None:
        """Validate the rule, as AdaptiveWindow does; start with no channels."""

    def touch(self, channel: SupportsIndex, now_ms: float, events: SupportsIndex = 1) -> bool:
        """Count events on a channel; open its window if it was idle (then return True)."""

    def touch_many(self, channels: npt.NDArray[np.int64] | memoryview, now_ms: float) -> int:
        """Count one event per entry of an int64 array of channel ids; return windows opened."""

    def due(self, now_ms: float) -> npt.NDArray[np.int64]:
        """Close and return (int64, in deadline order) every channel whose deadline is <= now_ms."""

    def next_deadline(self) -> float | None:
        """Return the earliest open deadline (ms), or None when no window is open."""

    def window_ms(self, channel: SupportsIndex) -> float:
        """Return the length of its open window, or of its next one (KeyError if unknown)."""

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
    def busy_rate(self) -> float:
        """Rate (events/s) at or above which a window gets max_ms."""

    @property
    def alpha(self) -> float:
        """Weight of one second of observation in the rate EWMA."""
