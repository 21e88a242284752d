"""A Python client of the realtime stream: an async iterator of events that survives reconnects.

    async with StreamClient("ws://localhost:4000/v2/realtime/stream", token) as stream:
        async for item in stream:
            if isinstance(item, Reset):
                ...  # reload state over HTTP: events were lost
            else:
                handle(item)  # one event (a dict), in order

It decodes every codec (streamcore.protocol, pure Python), remembers the org sequence's epoch
and the last position it applied, reconnects with resume (the server replays what was missed or
answers `reset`) and never applies a frame across a gap (docs/PROTOCOL.md, version 2). Give it
several URLs (one per instance) and it moves to the next when one cannot be reached: positions
mean the same on every instance, so it resumes wherever it lands.

It needs only websockets and zstandard (`pip install "streamcore[client]"`): no compiled engine,
no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .protocol import FrameKind, decode_frame

# Close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES = {1008}
# The instance is going away (1001, 1012) or overloaded (1013): reconnect elsewhere if we can.
MOVE_ON_CLOSE_CODES = {1001, 1012, 1013}


@dataclass(frozen=True)
class Reset:
    """Events were lost (history expired or lost, events lost, an unknown epoch): reload state."""

    reason: str
    seq: int
    message: dict[str, Any] = field(default_factory=dict)


class StreamRefused(Exception):
    """The server refused the stream (bad token, cap, bad query): `status` and `body` say why."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"stream refused with HTTP {status}: {body}")
        self.status = status
        self.body = body


class StreamClient:
    """Subscribe, decode, resume; iterate to get events (dicts) and Reset markers."""

    def __init__(
        self,
        url: str | list[str],
        token: str,
        *,
        codec: str = "zstd",
        properties: list[int] | None = None,
        reconnect: bool = True,
        initial_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        max_size: int = 64 * 1024 * 1024,
        on_hello: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("at least one stream URL")
        self._at = 0  # which of urls the next connect tries
        self.token = token
        self.codec = codec
        self.properties = properties
        self.reconnect = reconnect
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_size = max_size
        self.on_hello = on_hello
        self.epoch: str | None = None
        self.last_seq: int | None = None
        self.hello: dict[str, Any] | None = None
        self.connects = 0
        self.frames = 0
        self.last_close_code: int | None = None
        self._ws: ClientConnection | None = None
        self._closed = False

    def _url(self) -> str:
        q: dict[str, str] = {"codec": self.codec}
        if self.properties:
            q["properties"] = ",".join(str(p) for p in self.properties)
        if self.epoch is not None and self.last_seq is not None:
            q["epoch"] = self.epoch
            q["last_seq"] = str(self.last_seq)
        return f"{self.url}?{urlencode(q)}"

    @property
    def url(self) -> str:
        return self.urls[self._at]

    def _next_url(self) -> None:
        self._at = (self._at + 1) % len(self.urls)

    async def _connect(self) -> ClientConnection:
        try:
            ws = await connect(
                self._url(),
                additional_headers={"Authorization": f"Bearer {self.token}"},
                # The server's frames are compressed already (zstd/gzip); deflate would redo it.
                compression=None,
                max_size=self.max_size,
                open_timeout=10,
            )
        except InvalidStatus as exc:
            body: Any = exc.response.body
            with contextlib.suppress(ValueError):
                body = json.loads(body or b"")
            raise StreamRefused(exc.response.status_code, body) from None
        self.connects += 1
        self._ws = ws
        return ws

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for item in self.batches():
            if isinstance(item, Reset):
                yield item
            else:
                for event in item:
                    yield event

    async def batches(self) -> AsyncIterator[list[Any] | Reset]:
        """Yield each applied frame's events as a list (or a Reset), reconnecting as needed."""
        backoff = self.initial_backoff_s
        while not self._closed:
            try:
                ws = await self._connect()
            except StreamRefused as exc:
                if exc.status != 429 or not self.reconnect:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            except (OSError, TimeoutError):
                if not self.reconnect:
                    raise
                self._next_url()  # that instance is away: try the next one
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            gap = False
            try:
                async for item in self._session(ws):
                    if item is None:
                        gap = True
                        break
                    backoff = self.initial_backoff_s
                    yield item
            except ConnectionClosed as exc:
                self.last_close_code = exc.rcvd.code if exc.rcvd else None
                if self.last_close_code in FATAL_CLOSE_CODES:
                    raise
                if exc.rcvd is None or self.last_close_code in MOVE_ON_CLOSE_CODES:
                    self._next_url()  # dropped or restarting: another instance resumes it
            finally:
                if gap or self._closed:
                    await ws.close()
            if self._closed or not self.reconnect:
                return
            if not gap:
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _session(self, ws: ClientConnection) -> AsyncIterator[list[Any] | Reset | None]:
        async for message in ws:
            if isinstance(message, str):
                continue
            frame = decode_frame(message)
            self.frames += 1
            if frame.kind == FrameKind.CONTROL:
                for msg in frame.events:
                    kind = msg.get("type") if isinstance(msg, dict) else None
                    if kind == "hello":
                        self.hello = msg
                        if self.on_hello is not None:
                            self.on_hello(msg)
                        if self.epoch != msg["epoch"] or self.last_seq is None:
                            # A fresh subscription: the stream starts after the current seq.
                            self.epoch, self.last_seq = msg["epoch"], msg["seq"]
                    elif kind == "reset":
                        self.epoch, self.last_seq = msg["epoch"], msg["seq"]
                        yield Reset(msg.get("reason", ""), msg["seq"], msg)
                continue
            last = self.last_seq if self.last_seq is not None else frame.first_seq - 1
            if frame.seq <= last:
                continue  # a duplicate after a resume
            if frame.first_seq != last + 1:
                yield None  # a gap (or an overlap): reconnect and resume from last_seq
                return
            self.last_seq = frame.seq
            yield frame.events
