"""The sweeper forgets unwatched, aged-out channels a chunk per loop turn, never all in one."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import orjson

from app.events import Event
from app.realtime import hub as hub_module
from app.realtime.hub import Hub
from streamcore import Codec


class TurnLoop:
    """call_soon runs in the next turn; call_later/call_at when the clock reaches them."""

    def __init__(self) -> None:
        self.now = 100.0
        self.soon: list[Callable[[], None]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> Any:
        self.soon.append(callback)
        return self

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        self.later.append((when, callback))
        return self

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return self.call_at(self.now + delay, callback)

    def cancel(self) -> None:
        pass

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [cb for when, cb in self.later if when <= self.now]
        self.later = [(w, cb) for w, cb in self.later if w > self.now]
        for cb in due:
            cb()

    def turn(self) -> None:
        ready, self.soon = self.soon, []
        for cb in ready:
            cb()


class Watcher:
    org_id, codec, id, channel = 5, Codec.NONE, "w", None

    def send_control(self, frame: Any) -> None:
        pass


def test_a_sweep_of_many_channels_runs_in_chunks_and_spares_the_watched() -> None:
    loop = TurnLoop()
    hub = Hub(
        window_min_ms=30,
        window_max_ms=30,
        compression_threshold=1024,
        zstd_level=1,
        history_frames=4,
        history_age_s=10,  # the sweep interval is then 10 s too (its floor)
    )
    hub.bind(loop)  # type: ignore[arg-type]
    idle = 2 * hub_module.SWEEP_CHUNK + 123
    for org in range(10, 10 + idle):
        hub.ingest(Event(org, "k", True, orjson.dumps({"org": org})))
    hub.subscribe(Watcher(), None, None, None)  # org 5 is watched: it must stay
    loop.advance(0.05)  # every window flushes: each channel holds one frame of history
    assert len(hub._channels) == idle + 1

    loop.advance(hub.sweep_interval_s + 1)  # histories have aged out; the sweeper fires
    sizes = [idle + 1 - len(hub._channels)]
    while loop.soon:
        loop.turn()
        sizes.append(idle + 1 - len(hub._channels))
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= hub_module.SWEEP_CHUNK
    assert len(steps) == 3
    assert list(hub._channels) == [(5, None)]
    assert [cb for _, cb in loop.later] == [hub._sweep_timer]  # re-armed for the next round


def test_an_idle_channel_keeps_only_its_history_and_wakes_on_the_next_event() -> None:
    loop = TurnLoop()
    hub = Hub(
        window_min_ms=30,
        window_max_ms=30,
        compression_threshold=1024,
        zstd_level=1,
        history_frames=4,
        history_age_s=600,  # histories stay: the sweep keeps every channel
    )
    hub.bind(loop)  # type: ignore[arg-type]
    for org in (1, 2):
        hub.ingest(Event(org, "k", True, orjson.dumps({"n": 1})))
    loop.advance(0.05)
    assert hub.sweep() == 0
    one = hub.channel((1, None), create=False)
    assert one is not None and one.conflator is None  # freed: nothing pending, no window open
    # The collector's full pass visits every tracked object: an idle channel keeps three
    # (itself, its history deque and the frame); the frame's bytes by codec are not tracked.
    assert not gc.is_tracked(one.history[-1]._data)

    hub.ingest(Event(1, "k", True, orjson.dumps({"n": 2})))
    loop.advance(0.05)
    assert one.seq == 2 and [orjson.loads(p) for p in one.history[-1].payloads] == [{"n": 2}]
