"""The routes: GET /v2/realtime/stream (WebSocket) and POST /v2/realtime/publish.

Refusals at the handshake are HTTP answers (the ASGI `websocket.http.response` extension): 403 for
a missing or bad token, 400 for a bad query, 404 for a property not in the org, 429 with
Retry-After over a connection cap, 503 when the caps' store (Redis) cannot answer, each with the
API's JSON error body. A server without the
extension gets a close with code 1008 and the same message as the reason.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from streamcore import Codec

from .. import accounts
from ..auth import Principal, Tokens, authenticate
from ..errors import ApiError, InvalidToken, NotFound, PayloadTooLarge, error_response
from ..events import Event
from ..openapi import Operation
from ..responses import OrjsonResponse
from ..validation import JsonId, read_json
from .broker import HistoryUnavailable
from .caps import CapExceeded, Lease
from .connections import CLOSE_POLICY, CLOSE_SLOW_CONSUMER, Connection
from .ws_protocol import EXTENSION, PARKING

log = logging.getLogger("streamcore_server.realtime")

SUBPROTOCOL = "streamcore.v2"
BEARER_SUBPROTOCOL = "bearer."
CAP_RETRY_AFTER_S = 5
_EPOCH = re.compile(r"^[0-9a-f]{1,32}$")


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str, **kw: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = kw.get("details")
        self.headers = kw.get("headers")


def _token(ws: WebSocket) -> tuple[str | None, str | None]:
    """Return (token, subprotocol to accept) from the header, the query or a subprotocol."""
    header = ws.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(403, "invalid_token", "The Authorization header must be: Bearer <token>.")
        return token.strip(), None
    offered = ws.scope.get("subprotocols") or []
    for proto in offered:
        if proto.startswith(BEARER_SUBPROTOCOL):
            # A browser fails the handshake unless the server picks one of the offered
            # protocols, and the token must never be echoed back: clients also offer ours.
            if SUBPROTOCOL not in offered:
                raise Refusal(
                    400, "invalid_query", f"Offer the subprotocol {SUBPROTOCOL!r} with the token."
                )
            return proto[len(BEARER_SUBPROTOCOL) :], SUBPROTOCOL
    query_token = ws.query_params.get("access_token")
    accept = SUBPROTOCOL if SUBPROTOCOL in offered else None
    return (query_token or None), accept


def _principal(ws: WebSocket, token: str | None) -> Principal:
    # The authentication middleware verified the token once for this connection; an app
    # assembled without it (a test's) verifies here.
    state = ws.scope.get("state", {})
    if "auth" in state and token:
        outcome = state["auth"]
        if isinstance(outcome, Principal):
            return outcome
        if isinstance(outcome, ApiError):
            raise Refusal(403, "invalid_token", outcome.message)
    if not token:
        raise Refusal(
            403,
            "unauthorized",
            "Authentication required: an Authorization header, an access_token query parameter "
            f"or a '{BEARER_SUBPROTOCOL}<token>' subprotocol.",
        )
    tokens: Tokens = ws.app.state.tokens
    try:
        return tokens.verify_token(token)
    except InvalidToken as exc:
        raise Refusal(403, "invalid_token", exc.message) from None


def _query(ws: WebSocket) -> tuple[Codec, frozenset[int] | None, str | None, int | None]:
    q = ws.query_params
    try:
        codec = Codec.parse(q.get("codec", "zstd"))
    except ValueError:
        raise Refusal(
            400,
            "invalid_codec",
            "codec must be one of zstd, gzip, none.",
            details=[{"field": "codec", "message": "expected zstd, gzip or none"}],
        ) from None
    properties: frozenset[int] | None = None
    raw = q.get("properties")
    if raw:
        try:
            properties = frozenset(int(p) for p in raw.split(","))
            if not properties or len(properties) > 100 or min(properties) <= 0:
                raise ValueError
        except ValueError:
            raise Refusal(
                400,
                "invalid_query",
                "properties must be a comma-separated list of up to 100 property ids.",
                details=[{"field": "properties", "message": "expected ids like 1,2,3"}],
            ) from None
    epoch = q.get("epoch")
    last_seq: int | None = None
    if "last_seq" in q:
        try:
            last_seq = int(q["last_seq"])
            if not 0 <= last_seq < 1 << 64:
                raise ValueError
        except ValueError:
            raise Refusal(
                400,
                "invalid_query",
                "last_seq must be the seq of the last frame received (an integer >= 0).",
                details=[{"field": "last_seq", "message": "expected an integer >= 0"}],
            ) from None
        if epoch is not None and not _EPOCH.match(epoch):
            raise Refusal(
                400,
                "invalid_query",
                "epoch must be the one announced in the hello message.",
                details=[{"field": "epoch", "message": "expected a hex string"}],
            )
    return codec, properties, epoch, last_seq


async def _refuse(ws: WebSocket, refusal: Refusal) -> None:
    response = error_response(
        refusal.status, refusal.code, refusal.message, refusal.details, refusal.headers
    )
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(CLOSE_POLICY, refusal.message[:120])  # a close reason is <= 123 bytes


async def stream(ws: WebSocket) -> None:
    """Subscribe to the caller's org channel (docs/REALTIME.md, docs/PROTOCOL.md)."""
    state = ws.app.state
    hub = state.hub
    metrics = hub.metrics
    lease: Lease | None = None
    try:
        token, subprotocol = _token(ws)
        who = _principal(ws, token)
        codec, properties, epoch, last_seq = _query(ws)
        if properties:
            async with state.db.connect() as db:
                for pid in sorted(properties):
                    if not await accounts.property_in_org(db, pid, who.org_id):
                        raise Refusal(404, "not_found", f"Property {pid} not found.")
        lease = Lease(uuid.uuid4().hex, who.user_id, who.org_id)
        try:
            await state.caps.acquire(lease)
        except state.caps.unavailable:
            # The shared counts cannot be read: refuse plainly rather than fail the handshake.
            lease = None
            metrics.refused_unavailable += 1
            raise Refusal(
                503,
                "service_unavailable",
                "Connection limits cannot be checked right now; retry later.",
                details={"retryAfter": CAP_RETRY_AFTER_S},
                headers={"Retry-After": str(CAP_RETRY_AFTER_S)},
            ) from None
        except CapExceeded as exc:
            lease = None
            if exc.scope == "user":
                metrics.refused_user_cap += 1
            else:
                metrics.refused_org_cap += 1
            raise Refusal(
                429,
                "connection_limit_exceeded",
                exc.reason,
                details={"scope": exc.scope, "retryAfter": CAP_RETRY_AFTER_S},
                headers={"Retry-After": str(CAP_RETRY_AFTER_S)},
            ) from None
    except Refusal as refusal:
        if refusal.status == 403:
            metrics.refused_auth += 1
        elif refusal.status in (400, 404):
            metrics.refused_bad_request += 1
        await _refuse(ws, refusal)
        return

    settings = state.settings
    conn: Connection | None = None
    extensions = ws.scope.get("extensions") or {}
    prepared = extensions.get(EXTENSION)
    parking = extensions.get(PARKING) if prepared is not None else None
    try:
        await ws.accept(subprotocol=subprotocol)
        conn = Connection(
            lease.conn_id,
            who.user_id,
            who.org_id,
            codec,
            prepared=prepared,
            # A parked connection never sends through ASGI; without the bound methods it does
            # not keep the WebSocket (and through it the scope) alive.
            send_bytes=None if parking is not None else ws.send_bytes,
            close=None if parking is not None else ws.close,
            policy=settings.realtime_slow_consumer_policy,
            max_frames=settings.realtime_queue_max_frames,
            max_bytes=settings.realtime_queue_max_bytes,
            metrics=metrics,
            encoder=hub.encoder,
        )
        try:
            await hub.subscribe(conn, properties, epoch, last_seq)
        except HistoryUnavailable:
            # The org's sequence cannot be joined (the broker is away): come back later.
            conn = None
            await ws.close(CLOSE_SLOW_CONSUMER, "realtime broker unavailable")
            return
        conn.start()
        if parking is not None:
            # The app returns and the socket stays open: the ASGI task, this frame and every
            # middleware frame above it are freed for the connection's quiet life (~8 KB).
            parking.park(_Finish(hub, conn, state.caps, lease))
            conn = lease = None
            return
        await _until_closed(ws, conn)
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        if lease is not None:  # else parked: the finish runs when the socket closes
            await _Finish(hub, conn, state.caps, lease)()


class _Finish:
    """What ends a stream once its socket closes (parked or not): unsubscribe, stop, release
    the lease; conn is None when the stream never subscribed."""

    __slots__ = ("caps", "conn", "hub", "lease")

    def __init__(self, hub: Any, conn: Connection | None, caps: Any, lease: Lease) -> None:
        self.hub, self.conn, self.caps, self.lease = hub, conn, caps, lease

    async def __call__(self, code: int | None = None) -> None:
        try:
            if self.conn is not None:
                self.hub.unsubscribe(self.conn)
                await self.conn.stop()
        finally:
            await self.caps.release(self.lease)


async def _until_closed(ws: WebSocket, conn: Connection) -> None:
    # The ASGI path (no parking): clients have nothing to say in version 1; reading keeps pings
    # and closes flowing. Every ending (client close, drop, a server-side close of ours) arrives
    # here as a disconnect, so no second task waits on the connection.
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


# -- publish --------------------------------------------------------------------------------


class PublishedEvent(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        # The key rule below, stated in the document too: a key, or conflatable: false.
        json_schema_extra={
            "anyOf": [
                {"required": ["key"], "properties": {"key": {"type": "string"}}},
                {"required": ["conflatable"], "properties": {"conflatable": {"const": False}}},
            ]
        },
    )

    type: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Entity key: a later conflatable event with the same key replaces it.",
    )
    conflatable: StrictBool = Field(
        default=True, description="false: delivered every time, in order (a fact)."
    )
    property_id: JsonId | None = Field(default=None, alias="propertyId")
    data: Any = Field(description="Any JSON value; the encoded event is limited in size.")

    @model_validator(mode="after")
    def _key_for_conflation(self) -> PublishedEvent:
        if self.conflatable and not self.key:
            raise ValueError("a conflatable event needs a key (or set conflatable to false)")
        return self


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[PublishedEvent] = Field(
        min_length=1,
        description="In publish order; at most REALTIME_PUBLISH_MAX_EVENTS (1000) per request.",
    )


class PublishResponse(BaseModel):
    """Events accepted into the org's channel."""

    accepted: int


def envelope(org_id: int, e: PublishedEvent) -> bytes:
    """Encode a published event once, as finance events are (docs/REALTIME.md)."""
    body: dict[str, Any] = {"type": e.type, "orgId": org_id}
    if e.key is not None:
        body["key"] = e.key
        if not e.conflatable:
            body["conflatable"] = False  # lets a lagging connection's coalescer keep it
    if e.property_id is not None:
        body["propertyId"] = e.property_id
    body["data"] = e.data
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


async def publish(request: Request) -> Response:
    """Publish events to the caller's org channel, delivered to its stream subscribers."""
    who = authenticate(request)
    settings = request.app.state.settings
    body = await read_json(request, PublishRequest)
    if len(body.events) > settings.realtime_publish_max_events:
        raise PayloadTooLarge(
            f"At most {settings.realtime_publish_max_events} events per request.",
            details={"maxEvents": settings.realtime_publish_max_events},
        )
    events: list[Event] = []
    for i, e in enumerate(body.events):
        payload = envelope(who.org_id, e)
        if len(payload) > settings.realtime_event_max_bytes:
            raise PayloadTooLarge(
                f"Event {i} is {len(payload)} bytes encoded; the limit is "
                f"{settings.realtime_event_max_bytes}.",
                details={"index": i, "maxEventBytes": settings.realtime_event_max_bytes},
            )
        events.append(
            Event(
                who.org_id, e.key if e.conflatable else None, e.conflatable, payload, e.property_id
            )
        )
    pids = {e.property_id for e in body.events if e.property_id is not None}
    if pids:
        async with request.app.state.db.connect() as db:
            for pid in sorted(pids):
                if not await accounts.property_in_org(db, pid, who.org_id):
                    raise NotFound(f"Property {pid} not found.")
    try:
        await request.app.state.broker.publish_now(events)
    except Exception:
        raise ApiError(
            "The realtime broker is unavailable; retry later.",
            status=503,
            code="service_unavailable",
            headers={"Retry-After": "1"},
        ) from None
    return OrjsonResponse({"accepted": len(events)}, status_code=202)


operations = [
    Operation(
        "POST",
        "/v2/realtime/publish",
        publish,
        summary="Publish events to the org's realtime channel",
        tag="realtime",
        body=PublishRequest,
        responses={202: PublishResponse},
        errors=(400, 401, 404, 413, 415, 422, 503),
    )
]

websocket_routes = [WebSocketRoute("/v2/realtime/stream", stream)]
