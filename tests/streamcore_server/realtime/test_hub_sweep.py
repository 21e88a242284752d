"""The sweeper frees idle windows a chunk per loop turn, never all in one; channels go with
their last subscriber."""

from __future__ import annotations

import orjson
from hub_support import FakeLoop, Subscriber, make_hub, publish, subscribe_now

from streamcore_server.events import Event
from streamcore_server.realtime import hub as hub_module


def test_a_sweep_of_many_channels_runs_in_chunks_and_spares_the_busy() -> None:
    loop = FakeLoop()
    hub = make_hub(loop, window_min_ms=30, window_max_ms=30)
    idle = 2 * hub_module.SWEEP_CHUNK + 123
    for org in range(10, 10 + idle):
        subscribe_now(hub, Subscriber(org))
        publish(hub, Event(org, "k", True, orjson.dumps({"org": org})))
    loop.tick(0.05)  # every window flushes: nothing pending anywhere
    busy = subscribe_now(hub, Subscriber(5))
    assert sum(ch.conflator is not None for ch in hub._channels.values()) == idle + 1

    loop.tick(hub.sweep_interval_s - 0.05 - 0.001)
    publish(hub, Event(5, "k", True, b"{}"))  # org 5 has a window open when the sweeper fires
    loop.tick(0.002)
    sizes = [sum(ch.conflator is None for ch in hub._channels.values())]
    while loop.soon:
        loop.turn()
        sizes.append(sum(ch.conflator is None for ch in hub._channels.values()))
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert max(steps) <= hub_module.SWEEP_CHUNK
    assert len(steps) == 3 and sizes[-1] == idle
    assert busy.conflator is not None and busy.pending() == 1
    assert len(hub._channels) == idle + 1  # freed windows, not forgotten channels
    assert hub._sweep_timer in [t.callback for t in loop.timers]  # re-armed for the next round


def test_an_idle_channel_wakes_on_the_next_event_and_goes_with_its_last_subscriber() -> None:
    loop = FakeLoop()
    hub = make_hub(loop, window_min_ms=30, window_max_ms=30)
    sub = Subscriber(1)
    ch = subscribe_now(hub, sub)
    publish(hub, Event(1, "k", True, orjson.dumps({"n": 1})))
    loop.tick(0.05)
    assert hub.sweep() == 1 and ch.conflator is None  # freed: nothing pending, no window open
    publish(hub, Event(1, "k", True, orjson.dumps({"n": 2})))
    loop.tick(0.05)
    assert [(f.first_seq, f.seq) for f in sub.frames] == [(1, 1), (2, 2)]
    hub.unsubscribe(sub)
    assert hub.channel((1, None)) is None and not hub._orgs
