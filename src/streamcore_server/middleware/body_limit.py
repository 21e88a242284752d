"""Refuse request bodies over a byte limit (413) without reading them into memory.

Three ways a body can be too large, all answered the same way:
- Content-Length claims more than the limit: answered before a byte is read;
- a chunked body (no Content-Length) grows past the limit while streaming;
- more bytes arrive than Content-Length declared (a lying header): cut off at the lie.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLarge, error_response

# The unread rest of the body must not be parsed as the next request on this connection.
_CLOSE = {"Connection": "close"}


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, route_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Path -> a tighter limit (unauthenticated routes), applied before a byte is buffered.
        self.route_limits = dict(route_limits or {})

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: a WebSocket passes through for its whole life, and an `await` here
        # would keep this layer's frame alive that long (docs/REALTIME.md, idle connection).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.route_limits.get(scope["path"], self.max_body_bytes)
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > limit:
            await self._reject(scope, receive, send, limit)
            return

        # Never allow more than declared: the server should not frame past it, but an ASGI
        # server or proxy that does must not get an unbounded body through.
        allowed = limit if declared is None else declared
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    raise PayloadTooLarge(
                        self._message(limit), details={"limit": limit}, headers=_CLOSE
                    )
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            # Raised from receive() where no handler caught it (e.g. a streaming endpoint).
            if started:
                raise
            await self._reject(scope, receive, send, limit)

    def _message(self, limit: int) -> str:
        return f"The request body is larger than {limit} bytes."

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413, PayloadTooLarge.code, self._message(limit), {"limit": limit}, _CLOSE
        )
        await response(scope, receive, send)
