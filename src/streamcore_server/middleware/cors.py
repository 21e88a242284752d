"""Starlette's CORS middleware, made strict about who gets credentials.

Starlette adds Access-Control-Allow-Credentials (and Expose-Headers) to every response that
has an Origin; here they go only to listed origins, and a refused preflight carries no
Access-Control-* header at all and answers in the API's error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..errors import error_response

_LISTED_ONLY = ("access-control-allow-credentials", "access-control-expose-headers")


class CorsMiddleware(CORSMiddleware):
    # Starlette types its __call__ as a coroutine function; any awaitable is a valid ASGI return.
    def __call__(  # type: ignore[override]
        self, scope: Scope, receive: Receive, send: Send
    ) -> Awaitable[None]:
        # Not a coroutine for what passes through (a WebSocket, for its whole life): see
        # body_limit.BodyLimitMiddleware.__call__.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return super().__call__(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reasons = bytes(response.body).decode().removeprefix("Disallowed CORS ").split(", ")
        return error_response(
            400,
            "cors_rejected",
            "CORS preflight refused.",
            {"disallowed": reasons},
            {"Vary": "Origin"},
        )

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return

        async def strip(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name in _LISTED_ONLY:
                    if name in headers:
                        del headers[name]
            await send(message)

        await super().send(message, strip, request_headers)
