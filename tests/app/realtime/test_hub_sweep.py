"""The sweeper forgets unwatched, aged-out channels a chunk per loop turn, never all in one."""

from __future__ import annotations

import gc

import orjson
from hub_support import FakeLoop, Subscriber, make_hub

from app.events import Event
from app.realtime import hub as hub_module


def test_a_sweep_of_many_channels_runs_in_chunks_and_spares_the_watched() -> None:
    loop = FakeLoop()
    hub = make_hub(
        loop,
        window_min_ms=30,
        window_max_ms=30,
        history_frames=4,
        history_age_s=10,  # the sweep interval is then 10 s too (its floor)
    )
    idle = 2 * hub_module.SWEEP_CHUNK + 123
    for org in range(10, 10 + idle):
        hub.ingest(Event(org, "k", True, orjson.dumps({"org": org})))
    hub.subscribe(Subscriber(org_id=5), None, None, None)  # org 5 is watched: it must stay
    loop.tick(0.05)  # every window flushes: each channel holds one frame of history
    assert len(hub._channels) == idle + 1

    loop.tick(hub.sweep_interval_s + 1)  # histories have aged out; the sweeper fires
    sizes = [idle + 1 - len(hub._channels)]
    while loop.soon:
        loop.turn()
        sizes.append(idle + 1 - len(hub._channels))
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= hub_module.SWEEP_CHUNK
    assert len(steps) == 3
    assert list(hub._channels) == [(5, None)]
    assert [t.callback for t in loop.timers] == [hub._sweep_timer]  # re-armed for the next round


def test_an_idle_channel_keeps_only_its_history_and_wakes_on_the_next_event() -> None:
    loop = FakeLoop()
    hub = make_hub(
        loop,
        window_min_ms=30,
        window_max_ms=30,
        history_frames=4,
        history_age_s=600,  # histories stay: the sweep keeps every channel
    )
    for org in (1, 2):
        hub.ingest(Event(org, "k", True, orjson.dumps({"n": 1})))
    loop.tick(0.05)
    assert hub.sweep() == 0
    one = hub.channel((1, None), create=False)
    assert one is not None and one.conflator is None  # freed: nothing pending, no window open
    # The collector's full pass visits every tracked object: an idle channel keeps three
    # (itself, its history deque and the frame); the frame's bytes by codec are not tracked.
    assert not gc.is_tracked(one.history[-1]._data)

    hub.ingest(Event(1, "k", True, orjson.dumps({"n": 2})))
    loop.tick(0.05)
    assert one.seq == 2 and [orjson.loads(p) for p in one.history[-1].payloads] == [{"n": 2}]
