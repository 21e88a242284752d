"""The flush timer on a millisecond clock (uvloop's): it fires once per window, never early."""

from __future__ import annotations

import math
from collections.abc import Callable

import orjson
import pytest

from app.events import Event
from app.realtime.hub import Hub


class MillisecondLoop:
    """Timers fire on a fine clock; loop.time() reports it floored to whole ms, as uvloop does."""

    def __init__(self) -> None:
        self.true = 100.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return math.floor(self.true * 1000) / 1000

    def call_at(self, when: float, callback: Callable[[], None]) -> MillisecondLoop:
        self.timers.append((when, callback))
        return self

    def call_later(self, delay: float, callback: Callable[[], None]) -> MillisecondLoop:
        return self  # the sweeper: not part of this test

    def cancel(self) -> None:
        self.timers.clear()

    def run(self, seconds: float, step: float = 0.0001) -> None:
        end = self.true + seconds
        while self.true < end:
            self.true += step
            due = [t for t in self.timers if t[0] <= self.true]
            self.timers = [t for t in self.timers if t[0] > self.true]
            for _, callback in due:
                callback()


@pytest.mark.parametrize("rate_per_ms", [0.2, 1, 5])
def test_each_flush_finds_a_window_due(rate_per_ms: float) -> None:
    loop = MillisecondLoop()
    hub = Hub(
        window_min_ms=30,
        window_max_ms=150,
        compression_threshold=1024,
        zstd_level=1,
        history_frames=4,
        history_age_s=60,
    )
    hub.bind(loop)  # type: ignore[arg-type]
    calls = {"empty": 0, "built": 0}
    flush_due = hub.flush_due

    def counted() -> int:
        built = flush_due()
        calls["built" if built else "empty"] += 1
        return built

    hub.flush_due = counted  # type: ignore[method-assign]
    owed = 0.0
    for n in range(2000):  # two simulated seconds, events at a steady rate on 3 channels
        owed += rate_per_ms
        while owed >= 1:
            owed -= 1
            org = n % 3 + 1
            hub.ingest(Event(org, "k", True, orjson.dumps({"n": n})))
        loop.run(0.001)
    assert calls["built"] > 0
    assert calls["empty"] <= calls["built"] * 0.05, calls
