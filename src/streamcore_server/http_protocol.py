"""uvicorn's httptools protocol with read timeouts: a client must send its headers, then its body,
within a bound, or the connection is closed.

uvicorn times only the idle gap between requests (timeout_keep_alive), and restarts that timer on
every byte: 400 sockets sending nothing, or one header byte every few seconds, stayed open for
good. Here a timer runs from the connection's start (or the request's first byte) until the
headers are in, answered 408 when it fires; a second one runs until the body is in, after which
the app sees a disconnect (logged and counted as 499, the client's doing).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass
class ReadTimeouts:
    header_s: float = 10.0
    body_s: float = 30.0


# Set once per process from Settings (streamcore_server.main), before the server accepts a
# connection.
TIMEOUTS = ReadTimeouts()

_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_BODY = (
    b'{"error":{"code":"request_timeout","message":"The request headers did not arrive in '
    b'time.","details":null}}'
)


def configure(header_s: float, body_s: float) -> None:
    TIMEOUTS.header_s, TIMEOUTS.body_s = header_s, body_s


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus header and body read timeouts (TIMEOUTS)."""

    _read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, on_timeout: object) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, on_timeout)  # type: ignore[arg-type]

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(TIMEOUTS.header_s, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:  # a keep-alive connection's next request
            self._arm(TIMEOUTS.header_s, self._headers_timed_out)

    def on_headers_complete(self) -> None:
        self._arm(TIMEOUTS.body_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes the socket over, with its own pings
        super().handle_websocket_upgrade()

    def _headers_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.write(_408 % (len(_BODY), _BODY))
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # the app's receive() answers http.disconnect
