"""Cache-Control: no-store on every HTTP response whose handler did not choose a policy.

Writes, auth, metrics, health and every error are then never kept by a browser or a shared
cache; the finance reads set their own policy (streamcore_server/edge/policy.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CacheControlMiddleware:
    def __init__(self, app: ASGIApp, default: str = "no-store") -> None:
        self.app = app
        self.default = default.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", self.default))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)
