"""Honour Idempotency-Key on the routes that opt in: replay, refuse, or run once and store.

Pure ASGI and innermost, so the body limit has already bounded the body it reads, and it sees
the exact bytes and headers the handler sent. It resolves the caller from the bearer token
itself: a key belongs to an org and user, and a request without a valid token passes through
untouched (the handler answers 401). Requests without the header pass through untouched too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import idempotency as idem
from ..auth import Principal, Tokens
from ..errors import ApiError, error_response

log = logging.getLogger("streamcore_server.idempotency")


def _principal(scope: Scope, tokens: Tokens) -> Principal | None:
    state = scope.get("state", {})
    if "auth" in state:  # authenticated once, by the authentication middleware
        outcome = state["auth"]
        return outcome if isinstance(outcome, Principal) else None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            try:
                return tokens.verify_token(token.strip())
            except ApiError:
                return None
    return None


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, routes: Iterable[Route], mismatch_status: int = 409) -> None:
        self.app = app
        self.routes = list(routes)
        self.mismatch_status = mismatch_status

    def _route(self, scope: Scope) -> str | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path  # the template, so /x/1 and /x/2 are different routes
        return None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: a WebSocket passes through for its whole life, and an `await` here
        # would keep this layer's frame alive that long (docs/REALTIME.md, idle connection).
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        values = [v for k, v in scope["headers"] if k == b"idempotency-key"]
        route = self._route(scope) if values else None
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            key = idem.parse_key(values)
        except idem.InvalidKey as exc:
            await error_response(400, "idempotency_key_invalid", str(exc))(scope, receive, send)
            return
        state = scope["app"].state
        who = _principal(scope, state.tokens)
        if who is None:
            await self.app(scope, receive, send)
            return

        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        store: idem.Store = state.idempotency
        method = scope["method"]
        claim = store.new_claim(
            who.org_id,
            who.user_id,
            key,
            idem.fingerprint(method, route, bytes(body)),
            method,
            route,
        )
        outcome = await store.claim(claim)
        if not isinstance(outcome, idem.Claim):
            await self._answer(outcome, scope, receive, send)
            return

        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        status, headers, chunks = 500, [], bytearray()

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                chunks.extend(message.get("body", b""))
            await send(message)

        scope.setdefault("state", {})["idempotency"] = claim
        try:
            await self.app(scope, replay_body, capture)
        except idem.RecordExists:
            # Another request's record stands (Redis lost the key, or our lease lapsed): the
            # write was rolled back, so answer from that record.
            outcome = await store.lookup(claim) or idem.InProgress(1)
            # Our claim must not outlive this answer in Redis: later retries would read it as
            # "in progress" for a whole lease. The record replaces it, or it is let go.
            if isinstance(outcome, idem.Replay) and isinstance(store, idem.RedisStore):
                await store.cache(claim, outcome.stored)
            else:
                await self._release(store, claim)
            await self._answer(outcome, scope, receive, send)
            return
        except BaseException:
            await asyncio.shield(self._release(store, claim))
            raise
        saved = claim.saved
        if saved is not None and saved.status == status:
            if isinstance(store, idem.RedisStore):
                await store.cache(claim, saved)  # the database has it since the commit
        elif idem.storable(status) and saved is None:
            await store.save(claim, idem.Stored.of(status, headers, bytes(chunks)))
        else:
            await self._release(store, claim)

    async def _release(self, store: idem.Store, claim: idem.Claim) -> None:
        try:
            await store.release(claim)
        except Exception:  # the lease frees the key anyway
            log.exception("idempotency: release failed")

    async def _answer(
        self,
        outcome: idem.Replay | idem.Mismatch | idem.InProgress,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        stats: idem.Stats = scope["app"].state.idempotency_stats
        if isinstance(outcome, idem.Replay):
            stats.replays += 1
            stored = outcome.stored
            headers = [
                *stored.headers,
                (b"content-length", str(len(stored.body)).encode()),
                (b"idempotent-replayed", b"true"),
            ]
            await send({"type": "http.response.start", "status": stored.status, "headers": headers})
            await send({"type": "http.response.body", "body": stored.body})
            return
        if isinstance(outcome, idem.Mismatch):
            stats.mismatches += 1
            response = error_response(
                self.mismatch_status,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request (method, route or body).",
            )
        else:
            stats.in_progress += 1
            response = error_response(
                409,
                "idempotency_request_in_progress",
                "A request with this Idempotency-Key is still being processed; retry later.",
                {"retryAfter": outcome.retry_after_s},
                {"Retry-After": str(outcome.retry_after_s)},
            )
        await response(scope, receive, send)
