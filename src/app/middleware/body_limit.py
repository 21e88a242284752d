"""Refuse request bodies over a byte limit (413) without reading them into memory.

Three ways a body can be too large, all answered the same way:
- Content-Length claims more than the limit: answered before a byte is read;
- a chunked body (no Content-Length) grows past the limit while streaming;
- more bytes arrive than Content-Length declared (a lying header): cut off at the lie.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLarge, error_response

# The unread rest of the body must not be parsed as the next request on this connection.
_CLOSE = {"Connection": "close"}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return

        # Never allow more than declared: the server should not frame past it, but an ASGI
        # server or proxy that does must not get an unbounded body through.
        allowed = self.max_body_bytes if declared is None else declared
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    raise PayloadTooLarge(
                        self._message(),
                        details={"limit": self.max_body_bytes},
                        headers=_CLOSE,
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
            await self._reject(scope, receive, send)

    def _message(self) -> str:
        return f"The request body is larger than {self.max_body_bytes} bytes."

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, PayloadTooLarge.code, self._message(), {"limit": self.max_body_bytes}, _CLOSE
        )
        await response(scope, receive, send)
