"""Count every HTTP request by route template, method and status class, and time it.

Pure ASGI and outermost, so refusals answered by other middleware (413, CORS preflights, replayed
idempotent responses) count too. Per request: two perf_counter reads and Registry.record (a dict
lookup, Histogram.record, integer increments). The route template comes from scope["endpoint"],
which Starlette's router sets on the same scope dict; requests answered before routing are
matched against the routes once, and a request no route matches is labelled "unmatched".
"""

from __future__ import annotations

from collections.abc import Awaitable
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CLIENT_CLOSED_REQUEST
from ..metrics.registry import Registry


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: a WebSocket passes through for its whole life, and an `await` here
        # would keep this layer's frame alive that long (docs/REALTIME.md, idle connection).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500  # what the client gets if nothing answered
        answered = False

        async def send_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        async def receive_status() -> Message:
            nonlocal status
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                status = CLIENT_CLOSED_REQUEST  # gone before an answer: the client's doing
            return message

        start = perf_counter()
        try:
            await self.app(scope, receive_status, send_status)
        finally:
            end = perf_counter()
            endpoint = scope.get("endpoint")
            if endpoint is None:
                endpoint = self.registry.match(scope)
            self.registry.record(endpoint, scope["method"], status, end - start, end)
