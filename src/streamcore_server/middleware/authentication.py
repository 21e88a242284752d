"""One authentication step for every request: the bearer token, verified once, its user checked.

Pure ASGI. It reads the token where each kind of client sends it (the Authorization header; for
WebSockets also a `bearer.<token>` subprotocol or the access_token query parameter), verifies it
once, and checks that its user still exists in its org, then puts the outcome in
scope["state"]["auth"]: a Principal, the ApiError to answer with, or None without credentials.
Routes (auth.authenticate) and the idempotency middleware read it from there. A WebSocket whose
token names a removed user is refused here with 403; other refusals stay with the stream endpoint.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl

from sqlalchemy import select
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import storage
from ..auth import Principal, Tokens
from ..errors import ApiError, InvalidToken, error_response

# How long "this user exists" is believed before the database is asked again: a removed user's
# tokens stop working within this, at one indexed lookup per user per interval.
USER_CHECK_S = 5.0
_MAX_CACHED = 100_000
BEARER_SUBPROTOCOL = "bearer."


class UserGone(InvalidToken):
    """A correctly signed token whose user was removed (or moved to another org)."""


def bearer_token(scope: Scope) -> str | ApiError | None:
    """The token the request carries; None without one; an ApiError for a malformed header."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return InvalidToken("The Authorization header must be: Bearer <token>.")
            return str(token.strip())
    if scope["type"] != "websocket":
        return None
    for proto in scope.get("subprotocols") or ():
        if str(proto).startswith(BEARER_SUBPROTOCOL):
            return str(proto)[len(BEARER_SUBPROTOCOL) :] or None
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if key == "access_token":
            return value or None
    return None


class UserDirectory:
    """Does a user still exist in this org? Answers cached for USER_CHECK_S.

    Concurrent requests of a user whose answer is due share one lookup: at a steady 16-32
    requests in flight, every expiry otherwise sent that many identical queries at once, each
    needing a connection of its own.
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[int | None, float]] = {}
        self._asking: dict[int, asyncio.Future[int | None]] = {}

    async def org_of(self, app_state: object, user_id: int) -> int | None:
        hit = self._known.get(user_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        asking = self._asking.get(user_id)
        if asking is not None:
            return await asyncio.shield(asking)  # one caller's cancellation is not the others'
        asking = self._asking[user_id] = asyncio.ensure_future(self._look_up(app_state, user_id))
        asking.add_done_callback(lambda _: self._asking.pop(user_id, None))
        return await asyncio.shield(asking)

    async def _look_up(self, app_state: object, user_id: int) -> int | None:
        now = time.monotonic()
        engine = app_state.db  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            stmt = select(storage.users.c.org_id).where(storage.users.c.id == user_id)
            org_id: int | None = (await conn.execute(stmt)).scalar_one_or_none()
        if len(self._known) >= _MAX_CACHED:
            self._known.clear()
        self._known[user_id] = (org_id, now + USER_CHECK_S)
        return org_id


async def resolve(scope: Scope, directory: UserDirectory) -> Principal | ApiError | None:
    """Authenticate the request once: who it is, why it is refused, or None (no credentials)."""
    token = bearer_token(scope)
    if token is None or isinstance(token, ApiError):
        return token
    state = scope["app"].state
    tokens: Tokens = state.tokens
    try:
        principal = tokens.verify_token(token)
    except ApiError as exc:
        return exc
    if await directory.org_of(state, principal.user_id) != principal.org_id:
        return UserGone("The access token's user no longer exists.")
    return principal


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.directory = UserDirectory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        outcome = await resolve(scope, self.directory)
        scope.setdefault("state", {})["auth"] = outcome
        if scope["type"] == "websocket" and isinstance(outcome, UserGone):
            response = error_response(403, outcome.code, outcome.message)
            if "websocket.http.response" in scope.get("extensions", {}):
                await response(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": outcome.message})
            return
        await self.app(scope, receive, send)
