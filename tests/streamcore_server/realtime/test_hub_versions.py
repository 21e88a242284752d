"""Versioned states: a channel never takes a snapshot older than one it already took."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hub_support import Subscriber, make_hub, publish
from waiting import eventually_async

from streamcore_server.events import Event, state
from streamcore_server.realtime.broker import decode_batch, encode_events


def totals(version: int, cents: int) -> Event:
    data = {"propertyId": 1, "version": version, "totals": [{"expensesCents": cents}]}
    return state(1, "property.totals", "property:1:totals", data, version=version)


def delivered(
    events: list[Event], properties: frozenset[int] | None = None, window_every: int = 2
) -> tuple[list[Any], int]:
    """The events' data as delivered, and how many the hub dropped as stale."""

    async def run() -> tuple[list[Any], int]:
        hub = make_hub(asyncio.get_running_loop(), window_min_ms=5, window_max_ms=5)
        sock = Subscriber(org_id=1)
        await hub.subscribe(sock, properties, None, None)
        ch = sock.channel

        async def flushed() -> bool:  # the window closed: nothing waits in the channel
            return not ch.pending() and not hub.scheduler.is_active(ch.sched_id)

        for i, event in enumerate(events):
            publish(hub, event)
            if i % window_every == window_every - 1:  # the next events open a new window
                await eventually_async(flushed, "the window to flush")
        await eventually_async(flushed, "the last window to flush")
        hub.close()
        got = [orjson.loads(p)["data"] for f in sock.frames for p in f.payloads]
        return got, hub.metrics.stale_dropped

    return asyncio.run(run())


@pytest.mark.parametrize("properties", [None, frozenset({1})])
def test_a_late_older_snapshot_is_dropped_in_the_same_window_and_across_windows(
    properties: frozenset[int] | None,
) -> None:
    got, dropped = delivered(
        [totals(2, 20), totals(1, 10), totals(3, 30), totals(1, 10)], properties
    )
    assert [d["version"] for d in got] == [2, 3]
    assert dropped == 2


def test_in_order_snapshots_all_pass_and_unversioned_states_are_untouched() -> None:
    plain = Event(1, "property:1:totals", True, b'{"data": {"version": 0}}')
    got, dropped = delivered([totals(1, 10), totals(2, 20), plain], window_every=1)
    assert [d["version"] for d in got] == [1, 2, 0]
    assert dropped == 0


def test_the_version_crosses_the_broker() -> None:
    event = totals(4, 40)
    assert decode_batch(1, encode_events([event]), 7).events == [event]
