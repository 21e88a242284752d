"""The Hub alone, without sockets: a loop whose clock the test moves, a recording subscriber."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from streamcore import Codec
from streamcore_server.events import Event
from streamcore_server.realtime.broker import LocalBroker
from streamcore_server.realtime.hub import Channel, Frame, Hub


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
    """A hub fed by a LocalBroker (hub.source): publish through it, as the app does."""
    settings: dict[str, Any] = {
        "window_min_ms": 30,
        "window_max_ms": 150,
        "compression_threshold": 1024,
        "zstd_level": 1,
    }
    history = {
        "history_events": overrides.pop("history_events", 10_000),
        "history_age_s": overrides.pop("history_age_s", 600.0),
    }
    hub = Hub(**(settings | overrides))
    hub.bind(loop)
    hub.source = LocalBroker(hub, **history)
    return hub


def publish(hub: Hub, event: Event) -> None:
    broker = hub.source
    assert isinstance(broker, LocalBroker)
    broker.publish(event)


def subscribe_now(hub: Hub, conn: Any, properties: frozenset[int] | None = None) -> Channel:
    """hub.subscribe without a running loop: with a LocalBroker and no resume it never waits."""
    coro = hub.subscribe(conn, properties, None, None)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("subscribe waited")


class Subscriber:
    """Stands in for a connection: the hub only calls deliver and send_control."""

    def __init__(self, org_id: int, codec: Codec = Codec.NONE) -> None:
        self.id, self.org_id, self.codec, self.channel = "sub", org_id, codec, None
        self.group: Any = None
        self.close_code = None
        self.frames: list[Frame] = []
        self.controls: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_control(self, frame: Frame) -> None:
        self.controls.append(frame)
