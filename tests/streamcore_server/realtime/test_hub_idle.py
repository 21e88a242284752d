"""Idle channels cost the flusher nothing: it touches only the channels whose window is due.

The hub runs on a loop whose clock the test moves in 1 ms ticks, so the flush schedule is exact
and can be compared between a hub with no idle channels and one with thousands.
"""

from __future__ import annotations

from typing import Any

import orjson
from hub_support import FakeLoop, Subscriber, make_hub, publish, subscribe_now

from streamcore_server.events import Event
from streamcore_server.realtime.hub import Hub

IDLE = 10_000
HOT = (1, 2, 3)  # org ids with traffic; idle orgs are numbered from 1000 up


class Watched:
    """A channel's conflator that counts every use: an idle channel's must stay at zero."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.uses = inner, 0

    def __len__(self) -> int:
        self.uses += 1
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        self.uses += 1
        return getattr(self.inner, name)


def event(org: int, key: str, n: int) -> Event:
    return Event(org, key, True, orjson.dumps({"type": "quote", "orgId": org, "key": key, "n": n}))


def new_hub(loop: FakeLoop) -> tuple[Hub, list[tuple[float, int]]]:
    hub = make_hub(loop)
    # Flushes cost nothing on the moved clock: the windows depend on the schedule alone, not on
    # how busy the machine running the test is (a real cost over 1 simulated ms widened them).
    hub.cpu_clock = lambda: 0
    flushes: list[tuple[float, int]] = []  # (ms since the hot traffic began, frames built)
    flush_due = hub.flush_due

    def logged() -> int:
        built = flush_due()
        flushes.append((hub.now_ms(), built))
        return built

    hub.flush_due = logged  # type: ignore[method-assign]
    return hub, flushes


def prime_idle(hub: Hub, loop: FakeLoop, count: int) -> list[Watched]:
    """Give `count` watched orgs a channel that flushed one frame, then watch their conflators."""
    for org in range(1000, 1000 + count):
        subscribe_now(hub, Subscriber(org))
        publish(hub, event(org, "k0", 0))
    for _ in range(200):
        loop.tick()
    assert len(hub.scheduler) == 0, "every idle window flushed"
    watched = []
    for org in range(1000, 1000 + count):
        ch = hub.channel((org, None))
        assert ch is not None and ch.seq == 1
        watched.append(Watched(ch.conflator))
        ch.conflator = watched[-1]  # type: ignore[assignment]
    return watched


def hot_traffic(hub: Hub, loop: FakeLoop, flushes: list[tuple[float, int]]) -> list[Any]:
    """Two seconds of events to HOT (org 1 busiest); return the flush schedule they caused."""
    for org in HOT:
        subscribe_now(hub, Subscriber(org))
    start = hub.now_ms()
    flushes.clear()
    for ms in range(2000):
        for org in HOT:
            if ms % org == 0:  # org 1 every ms, org 2 every 2 ms, org 3 every 3 ms
                publish(hub, event(org, f"k{ms % 50}", ms))
        loop.tick()
    for _ in range(200):
        loop.tick()
    return [(round(t - start, 3), built) for t, built in flushes]


def test_flush_schedule_and_work_do_not_depend_on_idle_channels() -> None:
    quiet_loop = FakeLoop()
    quiet, quiet_flushes = new_hub(quiet_loop)
    # Windows end on grid points fixed in time, phased by channel id: give the hot orgs the ids
    # and the clock they get after prime_idle, so the two schedules can be compared exactly.
    quiet._next_sched_id += IDLE
    for _ in range(200):
        quiet_loop.tick()
    baseline = hot_traffic(quiet, quiet_loop, quiet_flushes)

    loop = FakeLoop()
    hub, flushes = new_hub(loop)
    watched = prime_idle(hub, loop, IDLE)
    schedule = hot_traffic(hub, loop, flushes)

    assert sum(built for _, built in baseline) > 20  # the hot orgs really flushed
    assert schedule == baseline  # same flushes, at the same times, building the same frames
    assert sum(w.uses for w in watched) == 0  # and no idle channel was looked into
    assert len(hub._channels) == IDLE + len(HOT)


def test_idle_channels_arm_no_flush_timer() -> None:
    loop = FakeLoop()
    hub, flushes = new_hub(loop)
    watched = prime_idle(hub, loop, 1000)
    flushes.clear()
    for _ in range(int(hub.sweep_interval_s) - 2):  # just under the first sweep
        loop.tick(1.0)
    assert flushes == []
    assert [t.callback for t in loop.timers] == [hub._sweep_timer]  # only the sweeper waits
    assert sum(w.uses for w in watched) == 0
