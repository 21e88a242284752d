"""Give every successful write its Consistency-Token, the floor its caller's reads must see.

Pure ASGI, just outside the idempotency middleware, so replayed responses carry a token too.
The response has not started when the handler's transaction has committed, so the primary's
WAL position read then is at or past the write's commit. The router keeps it per user as well
(replicas.py), and per org with an edge. Only the operations marked consistency="write" get one;
without replicas (or without a valid bearer token) requests pass untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..replicas import TOKEN_HEADER, ReplicaRouter
from .idempotency import _principal  # the same bearer-token reading as Idempotency-Key's

log = logging.getLogger("streamcore_server.replicas")
_HEADER = TOKEN_HEADER.lower().encode()


class ReadYourWritesMiddleware:
    def __init__(self, app: ASGIApp, routes: Iterable[Route]) -> None:
        self.app = app
        self.routes = list(routes)  # the operations that write the database

    def _writes(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        router: ReplicaRouter | None = getattr(state, "replicas", None)
        writes = router is not None and self._writes(scope)
        who = _principal(scope, state.tokens) if writes else None
        if router is None or who is None:
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                try:
                    token = await router.after_write(who.user_id, who.org_id)
                except Exception as exc:
                    # The write stands; only this caller's next reads may not see it at once.
                    log.warning("no consistency token", extra={"error": type(exc).__name__})
                else:
                    headers = list(message.get("headers", []))
                    headers.append((_HEADER, token.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_token)
