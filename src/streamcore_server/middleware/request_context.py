"""Give every request an id (X-Request-ID), put it in the log context, log one access line.

A WebSocket gets one line too, when it ends: 101 and its close code if it was accepted, else the
status of the HTTP answer that refused it (403, 404, 429...).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from functools import partial

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CLIENT_CLOSED_REQUEST, internal_error_response
from ..logs import request_id
from ..realtime.ws_protocol import PARKING

log = logging.getLogger("streamcore_server.access")
# A caller-supplied id is kept only if it cannot forge log structure or carry a payload.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# 32 hex digits like a uuid4's: 80 random bits drawn once per process, then a counter. Unique
# without a getrandom(2) call per request; a request id is a label, not a secret.
_ID_PREFIX = secrets.token_hex(10)
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFFFFFF:012x}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")  # the last one wins, as a dict of them did
        rid = incoming if incoming and _SAFE_ID.fullmatch(incoming) else new_request_id()
        token = request_id.set(rid)
        status = 500  # what the client gets if the app dies before answering
        responded = False
        close_code: int | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded, close_code
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status, responded = message["status"], True
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            elif kind == "websocket.accept":
                status, responded = 101, True
            elif kind == "websocket.close":
                if responded:
                    close_code = close_code or message.get("code", 1000)
                else:  # a close before accepting: the server answers 403 (no denial extension)
                    status, responded = 403, True
            await send(message)

        async def receive_watching() -> Message:
            nonlocal close_code, status
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect" and close_code is None and responded:
                close_code = message.get("code", 1005)
            elif kind == "http.disconnect" and not responded:
                status = CLIENT_CLOSED_REQUEST  # the client left before it was answered
            return message

        try:
            await self.app(scope, receive_watching, send_with_id)
        except Exception:
            # Answered here rather than by Starlette's outermost handler so the 500 carries the
            # request id and the logged traceback is tagged with it.
            log.exception("unhandled error", extra={"requestId": rid, "path": scope["path"]})
            if scope["type"] != "http" or responded:
                raise
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            parking = scope.get("extensions", {}).get(PARKING) if status == 101 else None
            if parking is not None and parking.parked and close_code is None:
                # The app parked the socket: it lives on past this call, and its line is logged
                # when it closes, with the close code and the whole duration.
                parking.on_close(partial(_access_line, rid, "WS", scope["path"], 101, started))
            else:
                method = scope.get("method", "WS")
                _access_line(rid, method, scope["path"], status, started, close_code)
            request_id.reset(token)


def _access_line(
    rid: str, method: str, path: str, status: int, started: float, close_code: int | None
) -> None:
    # Path only: query strings may carry cursors or, from careless clients, secrets.
    extra: dict[str, object] = {
        "requestId": rid,  # explicit: the record may be formatted after the reset
        "method": method,
        "path": path,
        "status": status,
        "durationMs": round((time.perf_counter() - started) * 1000, 2),
    }
    if status == 101:
        extra["closeCode"] = close_code if close_code is not None else 1006
    log.info("request", extra=extra)
