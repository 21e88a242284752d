"""Helpers for the realtime tests: raw WebSocket clients and the publish endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from streamcore.protocol import DecodedFrame, FrameKind, decode_frame


async def open_ws(url: str, token: str | None, **query: Any) -> ClientConnection:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(
        f"{url}?{qs}" if qs else url,
        additional_headers=headers,
        compression=None,
        open_timeout=10,
        max_size=64 * 1024 * 1024,
    )


async def next_frame(ws: ClientConnection, timeout: float = 5.0) -> DecodedFrame:
    return decode_frame(await asyncio.wait_for(ws.recv(), timeout))


async def hello(ws: ClientConnection) -> dict[str, Any]:
    frame = await next_frame(ws)
    assert frame.kind == FrameKind.CONTROL
    assert frame.events[0]["type"] == "hello"
    return frame.events[0]  # type: ignore[no-any-return]


async def frames_until(
    ws: ClientConnection, events: int, timeout: float = 5.0
) -> list[DecodedFrame]:
    """Collect event frames until they hold `events` events (bounded in time)."""
    got: list[DecodedFrame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(len(f.events) for f in got) < events:
        frame = await next_frame(ws, max(0.01, deadline - loop.time()))
        if frame.kind == FrameKind.EVENTS:
            got.append(frame)
    return got


async def publish(base: str, token: str, events: list[dict[str, Any]]) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=base, timeout=10) as client:
        return await client.post(
            "/v2/realtime/publish",
            json={"events": events},
            headers={"Authorization": f"Bearer {token}"},
        )


async def assert_silent(ws: ClientConnection, seconds: float) -> None:
    try:
        raw = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {decode_frame(raw)}")


async def assert_sigterm_closes_with_1012(proc: Any, conns: list[ClientConnection]) -> None:
    """SIGTERM to the server: every stream gets close code 1012 at once (within 5 s)."""
    import signal
    import time

    from websockets.exceptions import ConnectionClosed

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for ws in conns:
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed:
            pass
        else:
            raise AssertionError("a stream was not closed")
        assert ws.close_code == 1012
    assert time.monotonic() - started < 5
