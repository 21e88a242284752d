"""The Hub alone, without sockets: a loop whose clock the test moves, a recording subscriber."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from app.realtime.hub import Frame, Hub
from streamcore import Codec


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The loop calls the hub makes (time, call_at, call_later, call_soon) on a moved clock.

    With `ms_clock`, time() counts whole milliseconds as uvloop's does, while timers fire on the
    exact clock: a timer for a fractional deadline then runs before time() has reached it.
    """

    def __init__(self, ms_clock: bool = False) -> None:
        self.now = 100.0
        self.ms_clock = ms_clock
        self.timers: list[Timer] = []
        self.soon: list[Timer] = []

    def time(self) -> float:
        return math.floor(self.now * 1000) / 1000 if self.ms_clock else self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def call_soon(self, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now, callback)
        self.soon.append(timer)
        return timer

    def tick(self, seconds: float = 0.001) -> None:
        """Move the clock on; run the timers now due (one armed by them waits for the next tick)."""
        self.now += seconds
        due = [t for t in self.timers if t.when <= self.now and not t.cancelled]
        self.timers = [t for t in self.timers if t.when > self.now and not t.cancelled]
        for timer in sorted(due, key=lambda t: t.when):
            timer.callback()

    def run(self, ticks: int, seconds: float = 0.001) -> None:
        for _ in range(ticks):
            self.tick(seconds)

    def turn(self) -> None:
        """Run what call_soon queued (what it queues now runs in the next turn)."""
        ready, self.soon = self.soon, []
        for timer in ready:
            if not timer.cancelled:
                timer.callback()


def make_hub(loop: Any, **overrides: Any) -> Hub:
    settings: dict[str, Any] = {
        "window_min_ms": 30,
        "window_max_ms": 150,
        "compression_threshold": 1024,
        "zstd_level": 1,
        "history_frames": 100,
        "history_age_s": 600,
    }
    hub = Hub(**(settings | overrides))
    hub.bind(loop)
    return hub


class Subscriber:
    """Stands in for a connection: the hub only calls deliver and send_control."""

    def __init__(self, org_id: int, codec: Codec = Codec.NONE) -> None:
        self.id, self.org_id, self.codec, self.channel = "sub", org_id, codec, None
        self.frames: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_control(self, frame: Frame) -> None:
        pass
