"""A uvicorn WebSocket protocol that can write a prepared frame straight to the transport.

The stream sends the same frame to thousands of sockets. Through ASGI each send costs a message
dict, an await and the protocol's own framing (~2x the kernel's cost of the write, see
docs/REALTIME.md); here the WebSocket header is built once per frame and the bytes are written
synchronously. Handshake, pings, pongs and closes stay in uvicorn's code.

It touches uvicorn's private attributes (transport, conn, close_sent, disconnected,
handshake_complete, queue, loop, writable): uvicorn is pinned to a minor version and
tests/streamcore_server/realtime exercise this class against a real server.

It also keeps an idle connection small (docs/REALTIME.md, "What an idle connection holds"): the
receive queue and the `writable` event are lighter equivalents, once the 101 is sent the
handshake's request, response and parser frame are let go, and an app that has nothing more to
await may park the connection (scope["extensions"]["streamcore.park"]): its ASGI call returns,
the task and every middleware frame above it are freed, the socket stays open and a finish
coroutine runs when it closes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader

log = logging.getLogger("streamcore_server.realtime")

EXTENSION = "streamcore.prepared"
PARKING = "streamcore.park"
_OP_BINARY_FIN = 0x82
# Gives a peer that never reads a moment to take the close frame before the socket is cut.
ABORT_AFTER_S = 1.0


def ws_header(length: int) -> bytes:
    """Return the header of an unmasked, final, binary server frame carrying `length` bytes."""
    if length < 126:
        return bytes((_OP_BINARY_FIN, length))
    if length < 1 << 16:
        return struct.pack(">BBH", _OP_BINARY_FIN, 126, length)
    return struct.pack(">BBQ", _OP_BINARY_FIN, 127, length)


class Flag:
    """asyncio.Event for one loop, without the deque every Event allocates (760 bytes).

    uvicorn keeps one per connection (`writable`) that an idle stream never waits on: the waiters'
    list exists only while someone waits.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        fut = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if self._waiters is not None and fut in self._waiters:
                self._waiters.remove(fut)
        return True


class Inbox:
    """The receive queue uvicorn needs (put_nowait, get, empty), without asyncio.Queue's weight.

    An asyncio.Queue is three deques and a dict (3.2 KB); uvicorn pauses reading while a message
    waits, so this one holds a handful of messages at most and a plain list serves.
    """

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        # Every getter re-checks: one takes the item, the others wait again (there is one reader,
        # the app's receive(), so this wakes one future in practice).
        getters, self._getters = self._getters, None
        for fut in getters or ():
            if not fut.done():
                fut.set_result(None)

    def get_nowait(self) -> Any:
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            fut = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(fut)
            try:
                await fut
            finally:
                if self._getters is not None and fut in self._getters:
                    self._getters.remove(fut)
        return self._items.pop(0)


class PreparedSender:
    """What the app sees in scope["extensions"]["streamcore.prepared"]."""

    __slots__ = ("_proto",)

    def __init__(self, proto: StreamWebSocketProtocol) -> None:
        self._proto = proto

    @property
    def transport(self) -> Any:
        """The connection's transport, for a broadcast that writes to many at once."""
        return self._proto.transport

    def send(self, wire: bytes) -> bool:
        """Write a prepared frame (header + payload); False once the socket is closing."""
        p = self._proto
        if p.close_sent or p.disconnected or not p.handshake_complete:
            return False
        if p.transport.is_closing():  # a close frame already written by uvicorn's own paths
            return False
        try:
            p.transport.write(wire)
        except RuntimeError:  # uvloop: the handle closed before connection_lost ran
            return False
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._proto.transport.get_write_buffer_size()

    async def wait_writable(self) -> None:
        """Wait until the transport's buffer is under its low-water mark."""
        await self._proto.writable.wait()

    def close_now(self, code: int, reason: str) -> None:
        """Send a close frame without waiting for the buffer, then cut a peer that never reads."""
        p = self._proto
        if p.close_sent or p.disconnected:
            return
        p.close_sent = True
        p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        p.conn.send_close(code, reason)
        p.transport.write(b"".join(p.conn.data_to_send()))
        p.loop.call_later(ABORT_AFTER_S, p.transport.abort)


class Parked:
    """The receive side of a parked connection: no queue, one finish on the first disconnect.

    Stands in for uvicorn's queue (put_nowait, empty), which every path of a closing connection
    feeds a websocket.disconnect (peer close, our close, shutdown's 1012, connection_lost): the
    first one's code is the connection's, as the app's receive() would have returned it.
    """

    __slots__ = ("_closers", "_ctx", "_finish", "_loop", "_tasks", "code")

    def __init__(
        self,
        finish: Callable[[int], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._finish = finish
        # The app's context (request id for logs) for the finish and the close callbacks.
        self._ctx = contextvars.copy_context()
        self._loop = loop
        self._tasks = tasks
        self._closers: list[Callable[[int], None]] | None = None
        self.code: int | None = None

    def empty(self) -> bool:
        return True

    def put_nowait(self, message: Any) -> None:
        if message["type"] != "websocket.disconnect" or self.code is not None:
            return  # a parked app reads nothing
        self.code = code = message.get("code", 1005)
        # In uvicorn's task set: a graceful shutdown waits for it as for an ASGI task. Made
        # first, so a failing close callback cannot keep the lease and subscription.
        task = self._loop.create_task(self._run_finish(code), context=self._ctx)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        closers, self._closers = self._closers or [], None
        for callback in closers:
            try:
                self._ctx.run(callback, code)
            except Exception:
                log.exception("a close callback of a parked stream failed")

    def on_close(self, callback: Callable[[int], None]) -> None:
        if self.code is not None:
            self._ctx.run(callback, self.code)
        else:
            if self._closers is None:
                self._closers = []
            self._closers.append(callback)

    async def _run_finish(self, code: int) -> None:
        try:
            await self._finish(code)
        except Exception:
            log.exception("finishing a parked connection failed")


class Parking:
    """What the app sees in scope["extensions"]["streamcore.park"]."""

    __slots__ = ("_proto",)

    def __init__(self, proto: StreamWebSocketProtocol) -> None:
        self._proto = proto

    def park(self, finish: Callable[[int], Awaitable[None]]) -> None:
        """Keep the socket open when the app returns; await `finish(close_code)` once it closes.

        Call it after the accept, then return: messages from the client are dropped from then on
        (pings, pongs and closes are still answered by the protocol).
        """
        self._proto.park(finish)

    @property
    def parked(self) -> bool:
        return isinstance(self._proto.queue, Parked)

    def on_close(self, callback: Callable[[int], None]) -> None:
        """Call `callback(close_code)` when a parked connection closes (now if it has)."""
        queue = self._proto.queue
        assert isinstance(queue, Parked), "on_close is for a parked connection"
        queue.on_close(callback)


class StreamWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol plus the prepared-frame extension, kept lean."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn calls only put_nowait/get/empty on its queue and set/clear/wait on `writable`.
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and "request" in self.__dict__:
            self._forget_handshake()
        elif (
            message["type"] == "websocket.http.response.body"
            and not message.get("more_body", False)
            and self.close_sent
        ):
            # The denial response went out whole: the handshake is over, answered as the app
            # chose. uvicorn leaves handshake_complete False there and, when the app returns,
            # logs "ASGI callable returned without completing handshake" at ERROR.
            self.handshake_complete = True

    def _forget_handshake(self) -> None:
        # uvicorn reads request and response only until it sends the 101 (in handle_connect and
        # on websocket.accept); after the 101 they are dead weight.
        self.__dict__.pop("request", None)
        self.__dict__.pop("response", None)
        conn = self.conn
        # websockets' server parser is a generator whose frame holds the handshake Request as a
        # local for the connection's whole life. Swap it for the frame parser it delegates to,
        # started afresh, only when the old one waits at a frame boundary with nothing buffered
        # (a client may not send frames before the 101, so that is the case but for a rogue one).
        if conn.state is OPEN and not conn.reader.buffer and _at_frame_boundary(conn):
            conn.parser = Protocol.parse(conn)
            next(conn.parser)
        # The instance dict grew past the size where CPython shares keys (30 attributes): a
        # copy is a dict sized for what is left, half the bytes of the grown one.
        self.__dict__ = dict(self.__dict__)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = PreparedSender(self)
            scope["extensions"][PARKING] = Parking(self)

    def park(self, finish: Callable[[int], Awaitable[None]]) -> None:
        if not self.handshake_complete or isinstance(self.queue, Parked):
            raise RuntimeError("park a connection once, after websocket.accept")
        waiting, parked = self.queue, Parked(finish, self.loop, self.tasks)
        self.queue = parked  # type: ignore[assignment]
        # What arrived before the park: a disconnect among it finishes at once.
        while not waiting.empty():
            parked.put_nowait(waiting.get_nowait())
        if self.read_paused:  # a message had paused reading; nobody will take it now
            self.read_paused = False
            self.transport.resume_reading()

    def keepalive_timeout(self) -> None:
        # uvicorn writes the 1011 close and closes the transport, which waits for its buffer to
        # drain before connection_lost: from a dead peer that never reads, minutes later, and
        # only then does the app hear of it. The app hears now; the socket is cut shortly.
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing and not self.disconnected:
            self.queue.put_nowait(
                {"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}
            )
            self.loop.call_later(ABORT_AFTER_S, self.transport.abort)

    def send_receive_event_to_app(self) -> None:
        if isinstance(self.queue, Parked):
            self.frames = []  # parked: nobody reads, and reading must not pause
            return
        super().send_receive_event_to_app()

    async def run_asgi(self) -> None:
        # uvicorn's run_asgi closes the transport when the app returns; a parked one stays open.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if isinstance(self.queue, Parked) and result is None:
                # The scope (headers, query string, the app's state copy) was the app's.
                self.__dict__.pop("scope", None)
                return
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None:
            self.transport.close()


def _at_frame_boundary(conn: Any) -> bool:
    """True when the parser waits in StreamReader.at_eof, before any byte of a frame."""
    gen = conn.parser
    while getattr(gen, "gi_yieldfrom", None) is not None:
        gen = gen.gi_yieldfrom
    return getattr(gen, "gi_code", None) is StreamReader.at_eof.__code__
