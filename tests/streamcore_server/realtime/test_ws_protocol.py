"""StreamWebSocketProtocol after it lets the handshake go: the connection still does everything.

A small ASGI app under a real uvicorn with our protocol, spoken to by the real websockets client:
ASGI sends and receives, pings both ways, both close handshakes, a prepared frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from processes import free_port
from websockets.asyncio.client import connect
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from streamcore_server.realtime.ws_protocol import (
    EXTENSION,
    PARKING,
    Flag,
    Inbox,
    Parked,
    StreamWebSocketProtocol,
    _at_frame_boundary,
    ws_header,
)

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class EchoApp:
    """Echo text and bytes through ASGI; "prepared:<text>" answers with a prepared frame instead."""

    def __init__(self) -> None:
        self.disconnects: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        prepared = scope["extensions"][EXTENSION]
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await self.disconnects.put(message)
                return
            text = message.get("text")
            if text == "close please":
                await send({"type": "websocket.close", "code": 4001, "reason": "asked"})
            elif text is not None and text.startswith("prepared:"):
                payload = text.encode()
                assert prepared.send(ws_header(len(payload)) + payload)
            elif text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


@asynccontextmanager
async def served(
    app: Any, ping_timeout: float = 5.0
) -> AsyncIterator[tuple[Any, uvicorn.Server, str]]:
    """app under uvicorn with our protocol on a free port, until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol",
        ws_per_message_deflate=False,
        ws_ping_interval=0.05,
        ws_ping_timeout=ping_timeout,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert not task.done() and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    yield app, server, f"ws://127.0.0.1:{port}/ws"
    server.should_exit = True
    await asyncio.wait_for(task, 15)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoApp, uvicorn.Server, str]]:
    async with served(EchoApp()) as running:
        yield running


def only_protocol(server: uvicorn.Server) -> StreamWebSocketProtocol:
    (proto,) = server.server_state.connections
    assert isinstance(proto, StreamWebSocketProtocol)
    return proto


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_after_the_handshake_the_connection_holds_no_handshake_state(echo: Any) -> None:
    _, server, url = echo
    async with connect(url, compression=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        proto = only_protocol(server)
        assert "request" not in vars(proto) and "response" not in vars(proto)
        assert proto.conn.parser.gi_code is Protocol.parse.__code__  # type: ignore[attr-defined]
        assert isinstance(proto.queue, Inbox) and isinstance(proto.writable, Flag)


async def test_messages_pings_and_a_prepared_frame_flow_after_the_handshake(echo: Any) -> None:
    _, server, url = echo
    async with connect(url, compression=None, ping_interval=None) as ws:
        for i in range(20):  # each message pauses reading until the app takes it
            await ws.send(f"t{i}")
            await ws.send(bytes([i]) * 300)
        got = [await ws.recv() for _ in range(40)]
        assert got[::2] == [f"t{i}" for i in range(20)]
        assert got[1::2] == [bytes([i]) * 300 for i in range(20)]
        pong = await ws.ping(b"abcd")  # the client's ping, answered by the server
        await asyncio.wait_for(pong, 5)
        proto = only_protocol(server)
        # The server's keepalive pings (every 50 ms here) come back as pongs and get timed.
        await until(lambda: proto.last_ping_rtt > 0)
        await ws.send("prepared:frame")
        assert await ws.recv() == b"prepared:frame"


async def test_a_client_close_reaches_the_app_with_its_code(echo: Any) -> None:
    app, _, url = echo
    async with connect(url, compression=None) as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(1000, "bye")
    message = await asyncio.wait_for(app.disconnects.get(), 5)
    assert message["code"] == 1000


async def test_a_server_close_through_asgi_completes_the_handshake(echo: Any) -> None:
    _, server, url = echo
    async with connect(url, compression=None) as ws:
        await ws.send("close please")
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4001 and ws.close_reason == "asked"
    await until(lambda: not server.server_state.connections)


def test_the_parser_is_swapped_only_at_a_frame_boundary() -> None:
    conn = ServerProtocol()
    conn.receive_data(HANDSHAKE)
    (request,) = conn.events_received()
    assert isinstance(request, Request)
    conn.send_response(conn.accept(request))
    assert _at_frame_boundary(conn)
    # A masked text frame's first bytes: the parser has taken the header and waits for the rest.
    conn.receive_data(bytes([0x81, 0x85, 1, 2, 3, 4]))
    assert not conn.reader.buffer and not _at_frame_boundary(conn)


async def test_inbox_wakes_a_waiting_getter_and_keeps_order() -> None:
    inbox = Inbox()
    getter = asyncio.get_running_loop().create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await getter == 1
    assert not inbox.empty() and await inbox.get() == 2 and inbox.empty()


async def test_inbox_keeps_the_item_of_a_getter_cancelled_after_its_wake_up() -> None:
    inbox = Inbox()
    getter = asyncio.get_running_loop().create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("m")
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert await asyncio.wait_for(inbox.get(), 1) == "m"


async def test_flag_wait_returns_once_set_and_a_cancelled_waiter_is_dropped() -> None:
    flag = Flag()
    assert not flag.is_set()
    cancelled = asyncio.get_running_loop().create_task(flag.wait())
    waiter = asyncio.get_running_loop().create_task(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, 1) is True
    flag.clear()
    assert not flag.is_set()
    flag.set()
    assert await flag.wait() is True


class ParkingApp:
    """Accept, park, return: the socket lives on with no ASGI task; finishes are recorded."""

    def __init__(self) -> None:
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.closed: list[int] = []
        self.protocols: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        parking = scope["extensions"][PARKING]
        self.protocols.append(scope["extensions"][EXTENSION])

        async def finish(code: int) -> None:
            await self.finished.put(code)

        parking.park(finish)
        parking.on_close(self.closed.append)
        assert parking.parked


@pytest.fixture
async def parking() -> AsyncIterator[tuple[ParkingApp, uvicorn.Server, str]]:
    async with served(ParkingApp()) as running:
        yield running


async def test_a_parked_connection_has_no_task_and_still_pings_and_takes_frames(
    parking: Any,
) -> None:
    app, server, url = parking
    async with connect(url, compression=None, ping_interval=None) as ws:
        await until(lambda: app.protocols and not server.server_state.tasks)
        proto = only_protocol(server)
        assert isinstance(proto.queue, Parked) and "scope" not in vars(proto)
        for i in range(50):  # dropped, and reading never pauses
            await ws.send(f"ignored {i}")
        pong = await ws.ping(b"abcd")
        await asyncio.wait_for(pong, 5)
        await until(lambda: proto.last_ping_rtt > 0)  # the server's own keepalive
        assert app.protocols[0].send(ws_header(3) + b"abc")
        assert await asyncio.wait_for(ws.recv(), 5) == b"abc"
        assert app.finished.empty() and not app.closed
        await ws.close(1000, "bye")
    assert await asyncio.wait_for(app.finished.get(), 5) == 1000
    assert app.closed == [1000]
    await until(lambda: not server.server_state.connections and not server.server_state.tasks)


async def test_a_parked_connection_closed_by_the_server_finishes_with_that_code(
    parking: Any,
) -> None:
    app, server, url = parking
    async with connect(url, compression=None) as ws:
        await until(lambda: app.protocols and not server.server_state.tasks)
        app.protocols[0].close_now(4002, "go away")
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4002
    assert await asyncio.wait_for(app.finished.get(), 5) == 4002
    await until(lambda: not server.server_state.connections)


async def test_shutdown_closes_a_parked_connection_with_1012_and_waits_for_its_finish(
    parking: Any,
) -> None:
    app, server, url = parking
    async with connect(url, compression=None) as ws:
        await until(lambda: app.protocols and not server.server_state.tasks)
        server.should_exit = True
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1012
    assert await asyncio.wait_for(app.finished.get(), 5) == 1012


async def test_a_peer_that_stops_reading_is_finished_at_the_keepalive_timeout() -> None:
    # A dead peer: it never answers a ping and never drains what it was sent. Closing the
    # transport would wait for that buffer to flush, i.e. for TCP to give up, minutes later, with
    # the lease and subscription held all along; the disconnect must come at the timeout.
    import socket

    async with served(ParkingApp(), ping_timeout=0.3) as (app, server, url):
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            await until(lambda: app.protocols and not server.server_state.tasks)
            sender = app.protocols[0]
            frame = ws_header(64 * 1024) + bytes(64 * 1024)
            for _ in range(200):  # until the kernel's buffers are full and the transport holds
                if sender.buffered() > 0:
                    break
                assert sender.send(frame)  # written at once, up to what the kernel takes
            assert sender.buffered() > 0
            code = await asyncio.wait_for(app.finished.get(), 10)
            assert code == 1011  # the keepalive's failure code, as a disconnect
            await until(lambda: not server.server_state.connections)
        finally:
            sock.close()


async def test_parking_twice_or_before_the_accept_is_refused() -> None:
    proto = StreamWebSocketProtocol.__new__(StreamWebSocketProtocol)
    proto.handshake_complete = False
    proto.queue = Inbox()  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        proto.park(lambda code: asyncio.sleep(0))
