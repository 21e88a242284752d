"""Resume from history, reset when it is gone, slow consumers, and the Python client."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from support import frames_until, hello, next_frame, open_ws, publish
from waiting import eventually_async
from websockets.asyncio.client import connect

from app.client import Reset, StreamClient
from streamcore.protocol import FrameKind

FAST = {"window_min_ms": 20.0, "window_max_ms": 20.0}


async def _frames(srv: Any, token: str, n: int) -> None:
    """Publish n frames' worth: one event each, each after the previous window closed."""
    for _ in range(n):
        seq = srv.hub.metrics.frames_flushed
        r = await publish(srv.http, token, [{"type": "f", "conflatable": False, "data": seq}])
        assert r.status_code == 202
        for _ in range(200):
            if srv.hub.metrics.frames_flushed > seq:
                break
            await asyncio.sleep(0.01)


async def test_a_client_that_reconnects_gets_what_it_missed_in_order(rt_factory: Any) -> None:
    srv = await rt_factory(**FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
        await _frames(srv, t["token"], 3)
        seen = await frames_until(ws, 3)
        assert [f.seq for f in seen] == [1, 2, 3]
    await _frames(srv, t["token"], 4)  # frames 4..7 while away
    async with await open_ws(srv.ws, t["token"], epoch=epoch, last_seq=3) as ws:
        await hello(ws)
        replayed = await frames_until(ws, 4)
        assert [f.seq for f in replayed] == [4, 5, 6, 7]
        await _frames(srv, t["token"], 1)
        assert (await next_frame(ws)).seq == 8  # and then the live stream, no hole


@pytest.mark.parametrize("case", ["expired", "other_epoch"])
async def test_a_resume_past_the_history_gets_an_explicit_reset(rt_factory: Any, case: str) -> None:
    srv = await rt_factory(realtime_history_frames=2, **FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
    await _frames(srv, t["token"], 5)
    query = {"epoch": epoch if case == "expired" else "abc123", "last_seq": 1}
    async with await open_ws(srv.ws, t["token"], **query) as ws:
        await hello(ws)
        frame = await next_frame(ws)
        assert frame.kind == FrameKind.CONTROL
        (reset,) = frame.events
        reason = "history_expired" if case == "expired" else "epoch_changed"
        assert reset == {
            "type": "reset",
            "channel": f"org:{t['org']}",
            "epoch": epoch,
            "seq": 5,
            "oldest_seq": 4,
            "reason": reason,
        }
        assert frame.seq == 5


async def test_history_is_bounded_by_age(rt_factory: Any) -> None:
    srv = await rt_factory(realtime_history_age_s=0.2, **FAST)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        epoch = (await hello(ws))["epoch"]
    await _frames(srv, t["token"], 2)
    # Both frames are in the history before this instant; past it plus the age, they are not.
    aged_at = srv.hub.now_ms() + srv.hub.history_age_s * 1000.0

    async def aged() -> bool:
        return bool(srv.hub.now_ms() > aged_at)

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
    notes = [
        e
        for f in client_frames
        if f.kind == FrameKind.CONTROL
        for e in f.events
        if e["type"] == "coalesced"
    ]
    assert notes and all(n["first_seq"] < n["seq"] for n in notes)
    await stalled.close()


async def test_the_python_client_resumes_after_a_drop_and_surfaces_reset(rt_factory: Any) -> None:
    srv = await rt_factory(realtime_history_frames=3, **FAST)
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
        await _frames(srv, t["token"], 2)
        (conn,) = srv.hub.connections
        conn.shutdown(1013, "slow consumer")  # a drop the client recovers from
        await _frames(srv, t["token"], 2)  # published while it reconnects
        for _ in range(300):
            if len([r for r in received if not isinstance(r, Reset)]) >= 4:
                break
            await asyncio.sleep(0.02)
        assert [r["data"] for r in received] == [0, 1, 2, 3]
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
        await _frames(srv, t["token"], 1)
        for _ in range(200):
            if received[-1] != resets[0]:
                break
            await asyncio.sleep(0.02)
        assert received[-1]["data"] == 9  # the live stream goes on after the reset
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
