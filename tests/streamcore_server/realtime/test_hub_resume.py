"""Resume in the hub, against a source whose delivery the test controls (no Redis, no sockets).

The hard cases of resuming on another instance: this one is behind the one the client came
from, the missed range selects nothing for a narrowed channel, the history cannot be read, or
it holds a loss marker. A real Connection (ASGI path) records the frames it is sent.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import pytest
from hub_support import make_hub
from waiting import eventually_async

from streamcore import Codec
from streamcore.protocol import DecodedFrame, FrameKind, decode_frame
from streamcore_server.events import Event
from streamcore_server.realtime.broker import Batch, History, HistoryUnavailable, Position
from streamcore_server.realtime.connections import Connection
from streamcore_server.realtime.hub import Hub, RealtimeMetrics

EPOCH = "e1"


class Upstream:
    """The shared history: batches numbered here, handed to the hub only when the test says."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.batches: list[Batch] = []
        self.delivered = 0  # the newest position handed to the hub
        self.unavailable = False

    def append(self, *events: Event) -> None:
        first = self.batches[-1].last + 1 if self.batches else 1
        self.batches.append(Batch(first, list(events)))

    def lose(self) -> None:
        first = self.batches[-1].last + 1 if self.batches else 1
        self.batches.append(Batch(first, [], lost=1))

    def deliver(self) -> None:
        for batch in self.batches:
            if batch.last <= self.delivered:
                continue
            if batch.lost:
                self.hub.on_reset(1, EPOCH, batch.last, "events_lost")
            else:
                self.hub.on_batch(1, EPOCH, batch)
        self.delivered = self.top

    @property
    def top(self) -> int:
        return self.batches[-1].last if self.batches else 0

    async def join(self, org_id: int) -> Position:
        return Position(EPOCH, self.delivered)

    def leave(self, org_id: int) -> None:
        pass

    async def history(self, org_id: int, after: int) -> History:
        if self.unavailable:
            raise HistoryUnavailable("test")
        return History(EPOCH, self.top, [b for b in self.batches if b.last > after])


def fact(n: int, prop: int | None = None) -> Event:
    return Event(1, None, False, orjson.dumps({"n": n}), prop)


class Client:
    def __init__(self, hub: Hub) -> None:
        self.frames: list[DecodedFrame] = []
        self.conn = Connection(
            "c",
            1,
            1,
            Codec.NONE,
            prepared=None,
            send_bytes=self._got,
            close=self._closed,
            policy="coalesce",
            max_frames=100,
            max_bytes=1 << 20,
            metrics=RealtimeMetrics(),
            encoder=hub.encoder,
        )

    async def _got(self, data: bytes) -> None:
        self.frames.append(decode_frame(data))

    async def _closed(self, code: int, reason: str) -> None:
        pass

    def events(self) -> list[DecodedFrame]:
        return [f for f in self.frames if f.kind == FrameKind.EVENTS]

    def controls(self) -> list[dict[str, Any]]:
        return [m for f in self.frames if f.kind == FrameKind.CONTROL for m in f.events]

    def facts(self) -> list[int]:
        return [e["n"] for f in self.events() for e in f.events]


async def setup(properties: frozenset[int] | None = None) -> tuple[Hub, Upstream, Client]:
    hub = make_hub(asyncio.get_running_loop(), window_min_ms=5, window_max_ms=5)
    upstream = Upstream(hub)
    hub.source = upstream
    watcher = Client(hub)  # keeps the org's channel open, as other subscribers would
    await hub.subscribe(watcher.conn, properties, None, None)
    watcher.conn.start()
    return hub, upstream, watcher


async def resume(hub: Hub, last_seq: int, properties: frozenset[int] | None = None) -> Client:
    client = Client(hub)
    await hub.subscribe(client.conn, properties, EPOCH, last_seq)
    client.conn.start()
    return client


async def test_a_client_ahead_of_this_instance_continues_exactly_after_its_position() -> None:
    hub, upstream, _ = await setup()
    for n in range(1, 4):
        upstream.append(fact(n))
    upstream.deliver()  # this instance has taken 1..3
    for n in range(4, 8):
        upstream.append(fact(n))  # 4..7 are in the history; this instance has not taken them
    # The client saw up to 5 elsewhere. The resume waits for this instance to get there.
    task = asyncio.create_task(resume(hub, 5))
    await eventually_async(lambda: _waiting(hub), "the resume to wait for this instance")
    upstream.deliver()  # 4..7 arrive here in one window that straddles the client's position
    client = await task
    upstream.append(fact(8))
    upstream.deliver()
    await eventually_async(lambda: _has(client, [6, 7, 8]), "the frames after 5")
    frames = client.events()
    assert frames[0].first_seq == 6
    assert all(b.first_seq == a.seq + 1 for a, b in itertools.pairwise(frames))
    assert client.facts() == [6, 7, 8]
    hub.close()


async def test_a_missed_range_without_the_channels_events_leaves_no_hole() -> None:
    props = frozenset({2})
    hub, upstream, _ = await setup(props)
    upstream.append(fact(1, prop=2))
    upstream.deliver()
    await eventually_async(lambda: _flushed(hub), "the watcher's window to close")
    for n in range(2, 6):
        upstream.append(fact(n, prop=3))  # another property's: this channel selects none
    upstream.deliver()
    client = await resume(hub, 1, props)
    upstream.append(fact(6, prop=2))
    upstream.deliver()
    await eventually_async(lambda: _has(client, [6]), "the next frame")
    (frame,) = client.events()
    assert (frame.first_seq, frame.seq) == (2, 6)  # it covers what the client missed: nothing
    hub.close()


@pytest.mark.parametrize("fault", ["unavailable", "lost", "future", "expired"])
async def test_a_resume_that_cannot_be_served_is_a_reset_with_its_reason(fault: str) -> None:
    hub, upstream, _ = await setup()
    for n in range(1, 4):
        upstream.append(fact(n))
    if fault == "lost":
        upstream.lose()  # position 4: events that never reached the history
        upstream.append(fact(5))
    upstream.deliver()
    if fault == "unavailable":
        upstream.unavailable = True
    if fault == "expired":
        del upstream.batches[0]
    last = {"future": 99, "expired": 0}.get(fault, 1)
    client = await resume(hub, last)
    await eventually_async(lambda: _resets(client), "the reset")
    reason = {
        "unavailable": "history_unavailable",
        "lost": "events_lost",
        "future": "unknown_seq",
        "expired": "history_expired",
    }[fault]
    (reset,) = [m for m in client.controls() if m["type"] == "reset"]
    assert reset["reason"] == reason
    upstream.unavailable = False
    upstream.append(fact(100))
    upstream.deliver()
    await eventually_async(lambda: _has_fact(client, 100), "the live stream after the reset")
    # After the reset, the stream continues right after its seq: nothing before it is replayed.
    frames = client.events()
    assert frames[0].first_seq == reset["seq"] + 1
    assert all(b.first_seq == a.seq + 1 for a, b in itertools.pairwise(frames))
    hub.close()


async def _has_fact(client: Client, n: int) -> bool:
    return n in client.facts()


async def _has(client: Client, facts: list[int]) -> bool:
    return client.facts() == facts


async def _resets(client: Client) -> bool:
    return any(m["type"] == "reset" for m in client.controls())


async def _waiting(hub: Hub) -> bool:
    return bool(hub._flushed)  # a resume waits for this channel's next flush


async def _flushed(hub: Hub) -> bool:
    ch = hub.channel((1, frozenset({2})))
    return ch is not None and not ch.pending() and ch.seq == ch.org.position
