"""413 before a large body is read: declared, chunked, and lying Content-Length."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.middleware.body_limit import BodyLimitMiddleware
from streamcore_server.settings import Settings

LIMIT = 1024


class Recorder:
    """A bare ASGI app that reads its whole body and records how much it got."""

    def __init__(self) -> None:
        self.received = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Any]:
    """Drive an ASGI app by hand: the only way to send more bytes than Content-Length says."""
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    pulled = 0
    sent: list[Any] = []

    async def receive() -> Any:
        nonlocal pulled
        pulled += 1
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    sent.append({"pulled": pulled})
    return sent


def status_and_body(sent: list[Any]) -> tuple[int, Any]:
    start = next(m for m in sent if m.get("type") == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m.get("type") == "http.response.body")
    return start["status"], orjson.loads(body) if start["status"] != 200 else body


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    inner = Recorder()
    sent = await call(
        BodyLimitMiddleware(inner, max_body_bytes=LIMIT),
        [(b"content-length", str(LIMIT + 1).encode())],
        [b"x" * (LIMIT + 1)],
    )
    status, body = status_and_body(sent)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert sent[-1]["pulled"] == 0  # not one chunk was pulled from the client
    assert inner.received == 0
    headers = dict(next(m for m in sent if m.get("type") == "http.response.start")["headers"])
    assert headers[b"connection"] == b"close"


async def test_chunked_body_is_cut_off_once_it_passes_the_limit() -> None:
    inner = Recorder()
    chunks = [b"x" * 400] * 10  # 4000 bytes, no Content-Length
    sent = await call(BodyLimitMiddleware(inner, max_body_bytes=LIMIT), [], chunks)
    status, body = status_and_body(sent)
    assert status == 413 and body["error"]["details"] == {"limit": LIMIT}
    assert sent[-1]["pulled"] == 3  # 1200 bytes read, then it stopped
    assert inner.received <= LIMIT


async def test_a_lying_content_length_is_cut_off_at_the_lie() -> None:
    inner = Recorder()
    sent = await call(
        BodyLimitMiddleware(inner, max_body_bytes=LIMIT),
        [(b"content-length", b"10")],
        [b"x" * 10, b"y" * 500],
    )
    status, _ = status_and_body(sent)
    assert status == 413
    assert inner.received <= 10


@pytest.mark.parametrize("size", [0, LIMIT])
async def test_bodies_up_to_the_limit_pass(size: int) -> None:
    inner = Recorder()
    headers = [(b"content-length", str(size).encode())]
    sent = await call(BodyLimitMiddleware(inner, max_body_bytes=LIMIT), headers, [b"x" * size])
    assert status_and_body(sent)[0] == 200
    assert inner.received == size


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/db",
        data_dir=str(tmp_path),
        max_body_bytes=LIMIT,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_app_answers_413_for_declared_and_chunked_bodies(client: TestClient) -> None:
    big = b'{"email": "' + b"x" * 2000 + b'", "password": "p"}'
    declared = client.post("/auth/login", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def stream() -> Iterator[bytes]:
        yield big[:600]
        yield big[600:]

    chunked = client.post(
        "/auth/login", content=stream(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "payload_too_large"
    assert chunked.headers["connection"] == "close"


def test_the_default_limit_is_32_mib() -> None:
    assert Settings().max_body_bytes == 32 * 1024 * 1024


async def test_a_route_with_its_own_limit_is_cut_off_at_it() -> None:
    inner = Recorder()
    app = BodyLimitMiddleware(inner, max_body_bytes=LIMIT * 100, route_limits={"/": LIMIT})
    sent = await call(app, [], [b"x" * 400] * 10)  # chunked: no Content-Length to judge by
    status, body = status_and_body(sent)
    assert status == 413 and body["error"]["details"] == {"limit": LIMIT}
    assert sent[-1]["pulled"] == 3
    other = await call(
        BodyLimitMiddleware(Recorder(), max_body_bytes=LIMIT * 100, route_limits={"/x": LIMIT}),
        [],
        [b"x" * 400] * 10,
    )
    assert status_and_body(other)[0] == 200  # the general limit elsewhere


def test_login_takes_a_few_kib_before_anything_is_buffered(tmp_path: Any) -> None:
    # Unauthenticated: anyone could otherwise make the server hold MAX_BODY_BYTES per request.
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db", data_dir=str(tmp_path))
    assert settings.max_body_bytes == 32 * 1024 * 1024
    limit = settings.max_unauthenticated_body_bytes
    assert 2048 <= limit <= 16 * 1024

    def stream() -> Iterator[bytes]:
        yield b'{"email": "user@example.com", "password": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/auth/login", content=stream(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["details"] == {"limit": limit}
        document = client.get("/openapi.json").json()
    login = document["paths"]["/auth/login"]["post"]
    assert str(limit) in login["responses"]["413"]["description"]
