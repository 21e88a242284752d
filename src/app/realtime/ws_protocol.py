"""A uvicorn WebSocket protocol that can write a prepared frame straight to the transport.

The stream sends the same frame to thousands of sockets. Through ASGI each send costs a message
dict, an await and the protocol's own framing (~2x the kernel's cost of the write, see
docs/REALTIME.md); here the WebSocket header is built once per frame and the bytes are written
synchronously. Handshake, pings, pongs and closes stay in uvicorn's code.

It touches uvicorn's private attributes (transport, conn, close_sent, disconnected,
handshake_complete, queue, loop, writable): uvicorn is pinned to a minor version and
tests/app/realtime exercise this class against a real server.
"""

from __future__ import annotations

import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "streamcore.prepared"
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


class StreamWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol plus the prepared-frame extension."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = PreparedSender(self)
