"""One function per parser: feed it bytes, and fail only on an error it must never raise.

Each target lets through exactly the errors its contract names (a CorruptDataError for a bad
frame, a 400/422 for a bad request); anything else (an IndexError, a MemoryError, a zstd error
leaking out) is a finding. The same functions replay fuzz/crashes/ under pytest.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from streamcore import Histogram
from streamcore.errors import StreamcoreError
from streamcore.protocol import decode_frame
from streamcore_server import idempotency
from streamcore_server.auth import LoginRequest
from streamcore_server.errors import ApiError
from streamcore_server.finance import ExpenseIn, ListQuery, SummaryQuery
from streamcore_server.realtime.endpoint import PublishRequest

LIMITS = {"max_amount_cents": 100_000_000_000, "page_size_max": 200}


def frame(data: bytes) -> None:
    try:
        decoded = decode_frame(data)
    except StreamcoreError:
        return
    assert isinstance(decoded.events, list)


def histogram(data: bytes) -> None:
    try:
        h = Histogram.from_bytes(data)
    except StreamcoreError:
        return
    # A histogram that decoded must encode back to something that decodes the same.
    again = Histogram.from_bytes(h.to_bytes())
    assert again.count == h.count


def idempotency_key(data: bytes) -> None:
    values = data.split(b"\n")[:3]  # up to three header fields
    try:
        key = idempotency.parse_key(values)
    except idempotency.InvalidKey:
        return
    assert 1 <= len(key) <= idempotency.MAX_KEY_LENGTH
    assert all(0x21 <= ord(c) <= 0x7E for c in key)


def query(data: bytes) -> None:
    from streamcore_server.validation import read_query

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": data}
    request = Request(scope)
    for model in (ListQuery, SummaryQuery):
        try:
            read_query(request, model, context=LIMITS)
        except ApiError as exc:
            assert exc.status in (400, 422), exc.status


def json_bodies(data: bytes) -> None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    for model in (ExpenseIn, LoginRequest, PublishRequest):
        try:
            model.model_validate(value, context=LIMITS)
        except ValidationError as exc:
            exc.errors(include_url=False, include_input=False)  # must render, as the API does


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": frame,
    "histogram": histogram,
    "idempotency_key": idempotency_key,
    "query": query,
    "json_bodies": json_bodies,
}
