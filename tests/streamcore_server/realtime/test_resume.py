"""Resume from history, reset when it is gone, slow consumers, and the Python client."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest
from support import frames_until, hello, next_frame, open_ws, publish
from waiting import eventually_async
from websockets.asyncio.client import connect

from streamcore.client import Reset, StreamClient
from streamcore.protocol import FrameKind

FAST = {"window_min_ms": 20.0, "window_max_ms": 20.0}


_published = 0


async def _frames(srv: Any, token: str, n: int) -> list[int]:
    """Publish n facts, numbered across the test, each in its own window when someone watches.

    Returns their numbers. Each takes one position of the org's sequence.
    """
    global _published
    numbers = []
    for _ in range(n):
        flushed = srv.hub.metrics.frames_flushed
        watched = any(c.close_code is None for c in srv.hub.connections)
        number, _published = _published, _published + 1
        r = await publish(srv.http, token, [{"type": "f", "conflatable": False, "data": number}])
        assert r.status_code == 202
        numbers.append(number)
        # Best effort, bounded: a subscriber may leave (and its channel go) meanwhile, and then
        # no window closes; what the tests check is the events' positions, not the windows.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while watched and srv.hub.metrics.frames_flushed == flushed and loop.time() < deadline:
            await asyncio.sleep(0.01)
    return numbers


async def test_a_client_that_reconnects_gets_what_it_missed_in_order(rt_factory: Any) -> None:
    srv = await rt_factory(**FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
        first = await _frames(srv, t["token"], 3)
        seen = await frames_until(ws, 3)
        assert [(f.first_seq, f.seq) for f in seen] == [(1, 1), (2, 2), (3, 3)]
        assert [e["data"] for f in seen for e in f.events] == first
    missed = await _frames(srv, t["token"], 4)  # positions 4..7 while away
    async with await open_ws(srv.ws, t["token"], epoch=epoch, last_seq=3) as ws:
        await hello(ws)
        replayed = await frames_until(ws, 4)
        # Conflated as one window would be: every fact, in order, covering 4..7 exactly.
        assert replayed[0].first_seq == 4 and replayed[-1].seq == 7
        assert [e["data"] for f in replayed for e in f.events] == missed
        await _frames(srv, t["token"], 1)
        live = await next_frame(ws)
        assert (live.first_seq, live.seq) == (8, 8)  # and then the live stream, no hole


@pytest.mark.parametrize("case", ["expired", "other_epoch", "future"])
async def test_a_resume_it_cannot_serve_gets_an_explicit_reset(rt_factory: Any, case: str) -> None:
    srv = await rt_factory(realtime_history_events=2, **FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
    await _frames(srv, t["token"], 5)
    query = {
        "expired": {"epoch": epoch, "last_seq": 1},
        "other_epoch": {"epoch": "abc123", "last_seq": 1},
        "future": {"epoch": epoch, "last_seq": 99},
    }[case]
    async with await open_ws(srv.ws, t["token"], **query) as ws:
        await hello(ws)
        frame = await next_frame(ws)
        assert frame.kind == FrameKind.CONTROL
        (reset,) = frame.events
        reason = {"expired": "history_expired", "other_epoch": "epoch_changed"}.get(
            case, "unknown_seq"
        )
        assert reset == {
            "type": "reset",
            "channel": f"org:{t['org']}",
            "epoch": epoch,
            "seq": 5,
            "reason": reason,
        }
        assert frame.seq == 5
        await _frames(srv, t["token"], 1)
        live = await next_frame(ws)
        assert (live.first_seq, live.seq) == (6, 6)  # the stream goes on from the reset's seq


async def test_history_is_bounded_by_age(rt_factory: Any) -> None:
    import time

    srv = await rt_factory(realtime_history_age_s=0.2, **FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
    await _frames(srv, t["token"], 2)
    aged_at = time.monotonic() + 0.2  # both events were published before this instant

    async def aged() -> bool:
        return time.monotonic() > aged_at

    await eventually_async(aged, "the history to age out")
    async with await open_ws(srv.ws, t["token"], epoch=epoch, last_seq=0) as ws:
        await hello(ws)
        (reset,) = (await next_frame(ws)).events
        assert reset["reason"] == "history_expired"


async def _stalled_client(srv: Any, token: str) -> Any:
    """A client that stops reading: tiny receive buffer, and websockets stops after 1 message."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    return await connect(
        f"{srv.ws}?codec=none",
        sock=sock,
        compression=None,
        max_queue=1,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=64 * 1024 * 1024,
    )


# The kernel absorbs a few MB per socket before the server's own queue fills: frames are big.
LAGGY = {
    "realtime_queue_max_bytes": 1024 * 1024,
    "realtime_queue_max_frames": 8,
    "realtime_event_max_bytes": 1024 * 1024,
    **FAST,
}


async def test_disconnect_policy_closes_a_client_that_stops_reading(rt_factory: Any) -> None:
    srv = await rt_factory(realtime_slow_consumer_policy="disconnect", **LAGGY)
    t = await srv.tenant()
    stalled = await _stalled_client(srv, t["token"])
    async with await open_ws(srv.ws, t["token"], codec="none") as healthy:
        await hello(healthy)
        blob = "x" * 300_000
        for i in range(80):
            await publish(
                srv.http,
                t["token"],
                [{"type": "big", "conflatable": False, "data": {"i": i, "blob": blob}}],
            )
            await asyncio.sleep(0.025)
            if srv.hub.metrics.slow_disconnects:
                break
        assert srv.hub.metrics.slow_disconnects == 1
        got = await frames_until(healthy, i + 1, timeout=10)  # the healthy one missed nothing
        assert [e["data"]["i"] for f in got for e in f.events] == list(range(i + 1))
    for _ in range(200):
        if len(srv.hub.connections) == 0:
            break
        await asyncio.sleep(0.02)
    assert not srv.hub.connections and srv.app.state.caps.total() == 0
    stalled.transport.abort()


async def test_coalesce_policy_merges_what_waits_and_keeps_every_fact(rt_factory: Any) -> None:
    srv = await rt_factory(**LAGGY)  # coalesce is the default
    t = await srv.tenant()
    stalled = await _stalled_client(srv, t["token"])
    blob = "y" * 200_000
    for i in range(100):
        await publish(
            srv.http,
            t["token"],
            [
                {"type": "price", "key": "sku", "data": {"v": i}},
                {"type": "trade", "conflatable": False, "data": {"i": i}},
                {"type": "pad", "key": "pad", "data": blob},
            ],
        )
        await asyncio.sleep(0.025)
    assert srv.hub.metrics.coalesced >= 1
    assert srv.hub.metrics.slow_disconnects == 0
    (conn,) = srv.hub.connections
    assert conn._queued_bytes <= 1024 * 1024  # memory bounded however long it lags
    # Now the client reads everything: every fact once, in order; the price ends at its latest.
    client_frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    trades: list[int] = []
    last_price = None
    while loop.time() < deadline and (not trades or trades[-1] != 99):
        from streamcore.protocol import decode_frame

        frame = decode_frame(await asyncio.wait_for(stalled.recv(), 5))
        client_frames.append(frame)
        for e in frame.events:
            if e.get("type") == "trade":
                trades.append(e["data"]["i"])
            elif e.get("type") == "price":
                last_price = e["data"]["v"]
    assert trades == list(range(100))
    assert last_price == 99
    # A merged frame says what it stands for in its header: a wider range, and no hole.
    events = [f for f in client_frames if f.kind == FrameKind.EVENTS]
    assert any(f.seq - f.first_seq > 3 for f in events)
    assert all(b.first_seq == a.seq + 1 for a, b in itertools.pairwise(events))
    await stalled.close()


async def test_the_python_client_resumes_after_a_drop_and_surfaces_reset(rt_factory: Any) -> None:
    srv = await rt_factory(realtime_history_events=3, **FAST)
    t = await srv.tenant()
    # Reconnects after 0.5-1 s: time enough to publish past the history while it is away.
    client = StreamClient(srv.ws, t["token"], codec="gzip", initial_backoff_s=0.5)
    received: list[Any] = []

    async def consume() -> None:
        async for item in client:
            received.append(item)

    task = asyncio.create_task(consume())
    try:
        for _ in range(100):
            if srv.hub.connections:
                break
            await asyncio.sleep(0.02)
        sent = await _frames(srv, t["token"], 2)
        (conn,) = srv.hub.connections
        conn.shutdown(1013, "slow consumer")  # a drop the client recovers from
        sent += await _frames(srv, t["token"], 2)  # published while it reconnects
        for _ in range(300):
            if len([r for r in received if not isinstance(r, Reset)]) >= 4:
                break
            await asyncio.sleep(0.02)
        assert [r["data"] for r in received] == sent
        assert client.connects == 2
        # Away for longer than the history holds: an explicit Reset, then the live stream.
        (conn,) = srv.hub.connections
        conn.shutdown(1013, "slow consumer")
        await _frames(srv, t["token"], 5)
        for _ in range(300):
            if any(isinstance(r, Reset) for r in received):
                break
            await asyncio.sleep(0.02)
        resets = [r for r in received if isinstance(r, Reset)]
        assert [r.reason for r in resets] == ["history_expired"]
        assert client.last_seq == 9 and client.connects == 3
        (after,) = await _frames(srv, t["token"], 1)
        for _ in range(200):
            if received[-1] != resets[0]:
                break
            await asyncio.sleep(0.02)
        assert received[-1]["data"] == after  # the live stream goes on after the reset
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
