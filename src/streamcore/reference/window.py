"""Batch windows on a grid, readable: the specification `streamcore._window` must match exactly.

Same arithmetic, in the same order, as the compiled core (so results compare bit for bit); dicts and
heapq instead of C arrays. For tests and benchmarks only, never a fallback. The rule is explained in
docs/WINDOWS.md.
"""

from __future__ import annotations

import heapq
import math
import numbers
import operator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import StreamcoreTypeError, StreamcoreValueError

__all__ = ["ReferenceAdaptiveWindow", "ReferenceWindowScheduler", "grid_deadline"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
U64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio
DEAD_BAND = 1.1  # the shared length moves only when its target is more than 10% away
# A flush's cost is spread over at least 1 ns: over a subnormal elapsed time the sample is
# infinite while its weight is 0, and 0 * inf would make the load NaN for good.
MIN_ELAPSED_MS = 1e-6


def _real(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise StreamcoreTypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        v = float(x)
    except OverflowError:
        raise StreamcoreValueError(f"{name} must be finite, got {x!r}") from None
    if not math.isfinite(v):
        raise StreamcoreValueError(f"{name} must be finite, got {v!r}")
    return v


def _int64(x: object, name: str) -> int:
    if isinstance(x, bool | float) or not hasattr(type(x), "__index__"):
        raise StreamcoreTypeError(f"{name} must be an integer, got {type(x).__name__}")
    v = operator.index(x)  # type: ignore[arg-type]
    if not INT64_MIN <= v <= INT64_MAX:
        raise StreamcoreValueError(f"{name} must fit in int64, got {v}")
    return v


def _count(x: object, name: str) -> int:
    v = _int64(x, name)
    if v < 0:
        raise StreamcoreValueError(f"{name} must be >= 0, got {v}")
    return v


def phase_fraction(channel: int) -> float:
    """Return the channel's grid phase as a fraction of the window, in [0, 1)."""
    # Fibonacci hashing: consecutive ids land as evenly spread as n points can be
    return float(((channel & U64) * GOLDEN & U64) >> 11) * 2.0**-53


def grid_deadline(channel: int, length_ms: float, now_ms: float) -> float:
    """Return the first point of the channel's grid (phase + k * length) strictly after now_ms."""
    phase = phase_fraction(channel) * length_ms
    d = phase + (float(math.floor((now_ms - phase) / length_ms)) + 1.0) * length_ms
    # the quotient can round across an integer: put d back in (now, now + length]
    if d <= now_ms:
        d += length_ms
    elif d - length_ms > now_ms:
        d -= length_ms
    return d


class _Rule:
    """Rate and load EWMAs over time; a channel's window length from its rate and the load."""

    def __init__(
        self, min_ms: object, max_ms: object, quiet_rate: object, alpha: object, budget: object
    ) -> None:
        lo, hi = _real(min_ms, "min_ms"), _real(max_ms, "max_ms")
        quiet = _real(quiet_rate, "quiet_rate")
        a = _real(alpha, "alpha")
        b = _real(budget, "flush_budget")
        if not 0.0 < lo <= hi:
            raise StreamcoreValueError(
                f"need 0 < min_ms <= max_ms, got min_ms={lo!r}, max_ms={hi!r}"
            )
        if not quiet > 0.0:
            raise StreamcoreValueError(f"need 0 < quiet_rate, got quiet_rate={quiet!r}")
        if not 0.0 < a < 1.0:
            raise StreamcoreValueError(f"need 0 < alpha < 1, got alpha={a!r}")
        if not 0.0 < b <= 1.0:
            raise StreamcoreValueError(f"need 0 < flush_budget <= 1, got flush_budget={b!r}")
        self.min_ms, self.max_ms = lo, hi
        self.quiet_rate = quiet
        self.alpha = a
        self.budget = b
        # per ms: an EWMA keeps (1 - alpha) of its value per second without input
        self.k = -math.log1p(-a) / 1000.0
        if not self.k > 0.0:
            raise StreamcoreValueError(f"alpha is too small to move the rate, got alpha={a!r}")

    def length(self, rate: float, shared_ms: float) -> float:
        return self.min_ms if rate <= self.quiet_rate else shared_ms

    def decay(self, rate: float, idle_ms: float) -> float:
        if idle_ms <= 0.0:
            return rate
        return rate * math.exp(-self.k * idle_ms)

    def update(self, rate: float, events: int, elapsed_ms: float) -> float:
        if elapsed_ms <= 0.0:
            return rate
        w = -math.expm1(-self.k * elapsed_ms)
        return rate + w * (float(events) * 1000.0 / elapsed_ms - rate)


class _FlushLoad:
    """The smoothed flush load and the shared window length derived from it."""

    def __init__(self, rule: _Rule) -> None:
        self.rule = rule
        self.load = 0.0  # EWMA of flush CPU ms per wall ms (1.0 = one core)
        self.work_ms = 0.0  # EWMA of load * length: flush CPU ms per window period
        self.length_ms = rule.min_ms

    def update(self, cost_ms: float, elapsed_ms: float) -> None:
        r = self.rule
        elapsed_ms = max(elapsed_ms, MIN_ELAPSED_MS)
        w = -math.expm1(-r.k * elapsed_ms)
        sample = cost_ms / elapsed_ms
        self.load += w * (sample - self.load)
        # work per period barely depends on the period, so smoothing it does not feed back on L
        self.work_ms += w * (sample * self.length_ms - self.work_ms)
        target = self.work_ms / r.budget
        if target < r.min_ms:
            target = r.min_ms
        elif target > r.max_ms:
            target = r.max_ms
        cur = self.length_ms
        if (
            target == r.min_ms
            or target == r.max_ms
            or target > cur * DEAD_BAND
            or target * DEAD_BAND < cur
        ):
            self.length_ms = target


class ReferenceAdaptiveWindow:
    """The window rule for one channel (pure Python)."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        *,
        quiet_rate: float = 10.0,
        alpha: float = 0.9,
        flush_budget: float = 0.25,
    ) -> None:
        self._rule = _Rule(min_ms, max_ms, quiet_rate, alpha, flush_budget)
        self._flush = _FlushLoad(self._rule)
        self._rate = 0.0

    @property
    def length_ms(self) -> float:
        return self._rule.length(self._rate, self._flush.length_ms)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def load(self) -> float:
        return self._flush.load

    def wake(self, idle_ms: float) -> float:
        idle = _real(idle_ms, "idle_ms")
        if idle < 0.0:
            raise StreamcoreValueError(f"idle_ms must be >= 0, got {idle!r}")
        self._rate = self._rule.decay(self._rate, idle)
        return self.length_ms

    def observe(self, events: int, elapsed_ms: float, idle_ms: float = 0.0) -> float:
        n = _count(events, "events")
        elapsed = _real(elapsed_ms, "elapsed_ms")
        idle = _real(idle_ms, "idle_ms")
        if elapsed <= 0.0:
            raise StreamcoreValueError(f"elapsed_ms must be > 0, got {elapsed!r}")
        if idle < 0.0:
            raise StreamcoreValueError(f"idle_ms must be >= 0, got {idle!r}")
        self._rate = self._rule.decay(self._rate, idle)
        self._rate = self._rule.update(self._rate, n, elapsed)
        return self.length_ms

    def observe_flush(self, cost_ms: float, elapsed_ms: float) -> float:
        cost = _cost(cost_ms)
        elapsed = _real(elapsed_ms, "elapsed_ms")
        if elapsed <= 0.0:
            raise StreamcoreValueError(f"elapsed_ms must be > 0, got {elapsed!r}")
        self._flush.update(cost, elapsed)
        return self.length_ms


def _cost(cost_ms: object) -> float:
    cost = _real(cost_ms, "cost_ms")
    if cost < 0.0:
        raise StreamcoreValueError(f"cost_ms must be >= 0, got {cost!r}")
    return cost


@dataclass(slots=True)
class _Channel:
    rate: float = 0.0
    length_ms: float = 0.0
    t_ms: float = 0.0  # when the window opened (active) or last closed (idle)
    last_ms: float = -math.inf  # deadline of its last closed window
    events: int = 0
    active: bool = False
    deadline: float = 0.0


class ReferenceWindowScheduler:
    """Grid windows for many channels (pure Python: a dict and a heapq of (deadline, id))."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        *,
        quiet_rate: float = 10.0,
        alpha: float = 0.9,
        flush_budget: float = 0.25,
    ) -> None:
        self._rule = _Rule(min_ms, max_ms, quiet_rate, alpha, flush_budget)
        self._flush = _FlushLoad(self._rule)
        self._chans: dict[int, _Channel] = {}
        # may hold stale entries (forgotten channels); a live entry matches an active channel
        self._heap: list[tuple[float, int]] = []
        self._n_active = 0
        self._now = -math.inf
        self._t_load = -math.inf  # end of the last span the load has seen; the first now_ms
        self._pending_ms = 0.0  # flush cost not yet spread over a span (same-ms observations)
        self.windows_opened = 0
        self.windows_closed = 0

    def _enter(self, now: float) -> None:
        if now < self._now:
            raise StreamcoreValueError(
                f"now_ms went backwards: {now!r} < {self._now!r} (now_ms must be monotonic)"
            )
        if self._now == -math.inf:
            self._t_load = now
        self._now = now

    def _touch(self, key: int, events: int, now: float) -> bool:
        c = self._chans.get(key)
        if c is None:
            c = self._chans[key] = _Channel(rate=0.0, length_ms=self._rule.min_ms, t_ms=now)
        elif c.active:
            c.events = min(c.events + events, INT64_MAX)
            return False
        c.rate = self._rule.decay(c.rate, now - c.t_ms)
        c.length_ms = self._rule.length(c.rate, self._flush.length_ms)
        c.t_ms = now
        c.events = events
        c.active = True
        # never sooner than half a window after the last deadline: when the length has changed
        # the new grid would otherwise cut the next window short (an extra flush per channel)
        after = c.last_ms + 0.5 * c.length_ms
        c.deadline = grid_deadline(key, c.length_ms, now if now > after else after)
        heapq.heappush(self._heap, (c.deadline, key))
        self._n_active += 1
        self.windows_opened += 1
        return True

    def touch(self, channel: int, now_ms: float, events: int = 1) -> bool:
        key = _int64(channel, "channel")
        now = _real(now_ms, "now_ms")
        n = _count(events, "events")
        self._enter(now)
        if n == 0:
            return False
        return self._touch(key, n, now)

    def touch_many(self, channels: npt.NDArray[np.int64], now_ms: float) -> int:
        now = _real(now_ms, "now_ms")
        try:
            view = memoryview(channels)  # type: ignore[arg-type]
        except TypeError as exc:
            raise StreamcoreTypeError(
                "channels must be a C-contiguous int64 buffer (e.g. a numpy.int64 array), "
                f"got {type(channels).__name__}: {exc}"
            ) from None
        if view.ndim != 1 or view.format.lstrip("@=<") not in ("q", "l") or not view.c_contiguous:
            raise StreamcoreTypeError(
                "channels must be a C-contiguous int64 buffer (e.g. a numpy.int64 array), "
                f"got {type(channels).__name__} of format {view.format!r}, ndim {view.ndim}"
            )
        ids = view.tolist()
        self._enter(now)
        opened = 0
        for key in ids:
            opened += self._touch(key, 1, now)
        return opened

    def _live(self, deadline: float, key: int) -> _Channel | None:
        c = self._chans.get(key)
        return c if c is not None and c.active and c.deadline == deadline else None

    def _drop_stale(self) -> None:
        while self._heap and self._live(*self._heap[0]) is None:
            heapq.heappop(self._heap)

    def due(self, now_ms: float) -> npt.NDArray[np.int64]:
        return np.array(self.due_list(now_ms), dtype=np.int64)

    def due_list(self, now_ms: float) -> list[int]:
        now = _real(now_ms, "now_ms")
        self._enter(now)
        out: list[int] = []
        self._drop_stale()
        while self._heap and self._heap[0][0] <= now:
            deadline, key = heapq.heappop(self._heap)
            c = self._live(deadline, key)
            if c is None:
                continue
            c.rate = self._rule.update(c.rate, c.events, now - c.t_ms)
            c.length_ms = self._rule.length(c.rate, self._flush.length_ms)
            c.t_ms = now
            c.last_ms = deadline
            c.events = 0
            c.active = False
            self._n_active -= 1
            out.append(key)
            self._drop_stale()
        self.windows_closed += len(out)
        return out

    def observe_flush(self, now_ms: float, cost_ms: float) -> None:
        now = _real(now_ms, "now_ms")
        cost = _cost(cost_ms)
        self._enter(now)
        self._pending_ms += cost
        elapsed = now - self._t_load
        if elapsed > 0.0:
            self._flush.update(self._pending_ms, elapsed)
            self._pending_ms = 0.0
            self._t_load = now

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def _known(self, channel: object) -> _Channel:
        c = self._chans.get(_int64(channel, "channel"))
        if c is None:
            raise KeyError(channel)
        return c

    def window_ms(self, channel: int) -> float:
        return self._known(channel).length_ms

    def rate(self, channel: int) -> float:
        return self._known(channel).rate

    def is_active(self, channel: int) -> bool:
        c = self._chans.get(_int64(channel, "channel"))
        return c is not None and c.active

    def forget(self, channel: int) -> bool:
        c = self._chans.pop(_int64(channel, "channel"), None)
        if c is None:
            return False
        if c.active:
            self._n_active -= 1  # its heap entry goes stale and is skipped
        return True

    def __len__(self) -> int:
        return self._n_active

    @property
    def channels(self) -> npt.NDArray[np.int64]:
        return np.array(sorted(self._chans), dtype=np.int64)

    @property
    def load(self) -> float:
        return self._flush.load

    @property
    def length_ms(self) -> float:
        return self._flush.length_ms
