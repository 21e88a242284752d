"""Adaptive batch windows, readable: the specification `streamcore._window` must match exactly.

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

__all__ = ["ReferenceAdaptiveWindow", "ReferenceWindowScheduler"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


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


class _Rule:
    """rate (EWMA, events/s) -> window length; decay over silence; update after a window."""

    def __init__(
        self, min_ms: object, max_ms: object, quiet_rate: object, busy_rate: object, alpha: object
    ) -> None:
        lo, hi = _real(min_ms, "min_ms"), _real(max_ms, "max_ms")
        quiet, busy = _real(quiet_rate, "quiet_rate"), _real(busy_rate, "busy_rate")
        a = _real(alpha, "alpha")
        if not 0.0 < lo <= hi:
            raise StreamcoreValueError(
                f"need 0 < min_ms <= max_ms, got min_ms={lo!r}, max_ms={hi!r}"
            )
        if not 0.0 < quiet < busy:
            raise StreamcoreValueError(
                f"need 0 < quiet_rate < busy_rate, got quiet_rate={quiet!r}, busy_rate={busy!r}"
            )
        if not 0.0 < a < 1.0:
            raise StreamcoreValueError(f"need 0 < alpha < 1, got alpha={a!r}")
        self.min_ms, self.max_ms, self.span_ms = lo, hi, hi - lo
        self.quiet_rate, self.busy_rate = quiet, busy
        self.log_quiet = math.log(quiet)
        self.log_span = math.log(busy) - math.log(quiet)
        self.alpha = a
        # per ms: the EWMA keeps (1 - alpha) of its value per second of silence
        self.k = -math.log1p(-a) / 1000.0
        if not self.k > 0.0:
            raise StreamcoreValueError(f"alpha is too small to move the rate, got alpha={a!r}")

    def length(self, rate: float) -> float:
        if rate <= self.quiet_rate:
            return self.min_ms
        if rate >= self.busy_rate:
            return self.max_ms
        x = self.min_ms + self.span_ms * ((math.log(rate) - self.log_quiet) / self.log_span)
        return x if x < self.max_ms else self.max_ms

    def decay(self, rate: float, idle_ms: float) -> float:
        if idle_ms <= 0.0:
            return rate
        return rate * math.exp(-self.k * idle_ms)

    def update(self, rate: float, events: int, elapsed_ms: float) -> float:
        if elapsed_ms <= 0.0:
            return rate
        w = -math.expm1(-self.k * elapsed_ms)
        return rate + w * (float(events) * 1000.0 / elapsed_ms - rate)


class ReferenceAdaptiveWindow:
    """The window rule for one channel (pure Python)."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        quiet_rate: float = 10.0,
        busy_rate: float = 1000.0,
        alpha: float = 0.9,
    ) -> None:
        self._rule = _Rule(min_ms, max_ms, quiet_rate, busy_rate, alpha)
        self._rate = 0.0
        self._length = self._rule.min_ms

    @property
    def length_ms(self) -> float:
        return self._length

    @property
    def rate(self) -> float:
        return self._rate

    def wake(self, idle_ms: float) -> float:
        idle = _real(idle_ms, "idle_ms")
        if idle < 0.0:
            raise StreamcoreValueError(f"idle_ms must be >= 0, got {idle!r}")
        self._rate = self._rule.decay(self._rate, idle)
        self._length = self._rule.length(self._rate)
        return self._length

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
        self._length = self._rule.length(self._rate)
        return self._length


@dataclass(slots=True)
class _Channel:
    rate: float = 0.0
    length_ms: float = 0.0
    t_ms: float = 0.0  # when the window opened (active) or last closed (idle)
    events: int = 0
    active: bool = False
    deadline: float = 0.0


class ReferenceWindowScheduler:
    """Adaptive windows for many channels (pure Python: a dict and a heapq of (deadline, id))."""

    def __init__(
        self,
        min_ms: float = 30.0,
        max_ms: float = 150.0,
        quiet_rate: float = 10.0,
        busy_rate: float = 1000.0,
        alpha: float = 0.9,
    ) -> None:
        self._rule = _Rule(min_ms, max_ms, quiet_rate, busy_rate, alpha)
        self._chans: dict[int, _Channel] = {}
        # may hold stale entries (forgotten channels); a live entry matches an active channel
        self._heap: list[tuple[float, int]] = []
        self._n_active = 0
        self._now = -math.inf
        self.windows_opened = 0
        self.windows_closed = 0

    def _enter(self, now: float) -> None:
        if now < self._now:
            raise StreamcoreValueError(
                f"now_ms went backwards: {now!r} < {self._now!r} (now_ms must be monotonic)"
            )
        self._now = now

    def _touch(self, key: int, events: int, now: float) -> bool:
        c = self._chans.get(key)
        if c is None:
            c = self._chans[key] = _Channel(rate=0.0, length_ms=self._rule.min_ms, t_ms=now)
        elif c.active:
            c.events = min(c.events + events, INT64_MAX)
            return False
        c.rate = self._rule.decay(c.rate, now - c.t_ms)
        c.length_ms = self._rule.length(c.rate)
        c.t_ms = now
        c.events = events
        c.active = True
        c.deadline = now + c.length_ms
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
            c.length_ms = self._rule.length(c.rate)
            c.t_ms = now
            c.events = 0
            c.active = False
            self._n_active -= 1
            out.append(key)
            self._drop_stale()
        self.windows_closed += len(out)
        return np.array(out, dtype=np.int64)

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
