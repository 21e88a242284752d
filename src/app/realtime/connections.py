"""One subscriber: a bounded send queue drained by its own writer, and the slow-consumer policy.

The flusher hands every subscriber the same Frame synchronously. A connection whose socket keeps up
gets the bytes written at once (prepared path) and never touches its queue; one that lags queues
them, bounded in frames and bytes. Over the bound, `coalesce` merges what waits into one frame
(re-conflated by key, every non-conflatable event kept) and `disconnect` closes with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from streamcore import Codec, Conflator, FrameEncoder, FrameKind

from .ws_protocol import PreparedSender

if TYPE_CHECKING:
    from .hub import Channel, Frame, RealtimeMetrics

log = logging.getLogger("app.realtime")

CLOSE_SLOW_CONSUMER = 1013  # "try again later": the client reconnects and resumes
CLOSE_SHUTDOWN = 1012  # "service restart"
CLOSE_POLICY = 1008


def coalesced_note(seq: int, first_seq: int) -> Frame:
    """The control frame announcing that the next event frame merges first_seq..seq."""
    from .hub import Frame

    body = orjson.dumps({"type": "coalesced", "first_seq": first_seq, "seq": seq})
    return Frame(seq, FrameKind.CONTROL, [body])


def conflation_keys(payloads: list[bytes]) -> list[str | None]:
    """The key each event conflates on, None for the ones that must all be kept.

    An event is conflatable when its envelope has a "key" and not "conflatable": false
    (events.state() and POST /v2/realtime/publish build envelopes that way).
    """
    keys: list[str | None] = []
    for payload in payloads:
        try:
            head = orjson.loads(payload)
        except orjson.JSONDecodeError:
            head = None
        key = head.get("key") if isinstance(head, dict) else None
        keyed = isinstance(key, str) and head.get("conflatable", True) is not False
        keys.append(key if keyed else None)
    return keys


def coalesce_payloads(frames: list[Frame]) -> list[bytes]:
    """Merge several windows into one: conflatable events by key (latest wins), facts all kept."""
    conflator = Conflator()
    for frame in frames:
        for key, payload in zip(frame.keys(), frame.payloads, strict=True):
            conflator.push(key, payload, key is not None)
    return conflator.drain()


class Connection:
    """A subscriber of one channel."""

    def __init__(
        self,
        conn_id: str,
        user_id: int,
        org_id: int,
        codec: Codec,
        *,
        prepared: PreparedSender | None,
        send_bytes: Callable[[bytes], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        policy: str,
        max_frames: int,
        max_bytes: int,
        metrics: RealtimeMetrics,
        encoder: FrameEncoder,
    ) -> None:
        self.id = conn_id
        self.user_id = user_id
        self.org_id = org_id
        self.codec = codec
        self.channel: Channel | None = None
        self._prepared = prepared
        self._send_bytes = send_bytes
        self._close = close
        self._policy = policy
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._encoder = encoder
        # Entries: (Frame, coalesced-from seq or 0). Frames are shared with the channel's history.
        self._queue: deque[tuple[Any, int]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._writer: asyncio.Task[None] | None = None
        # The writer holds a frame it took off the queue: the direct path must wait behind it.
        self._in_flight = False

    def start(self) -> None:
        # The writer task exists only on the paths that need one: ASGI sends, or a lagging socket
        # (an idle connection on the prepared path costs no task).
        if self._prepared is None or self._queue:
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    # -- called synchronously by the flusher ---------------------------------------------------

    def deliver(self, frame: Frame) -> None:
        """Send the frame now if the socket keeps up, else queue it (bounded)."""
        if self.close_code is not None:
            return
        prepared = self._prepared
        if (
            prepared is not None
            and not self._queue
            and not self._in_flight
            and prepared.buffered() < self._max_bytes
        ):
            if not prepared.send(frame.wire(self.codec, self._encoder)):
                self._mark_closed(1006)
            self._metrics.frames_sent += 1
            return
        self._enqueue(frame, 0)

    def send_control(self, frame: Frame) -> None:
        """Send a control frame (hello, reset, a replayed frame) in order; never coalesced away."""
        if self.close_code is None and self._prepared is not None:
            self.deliver(frame)
        elif self.close_code is None:
            self._enqueue(frame, 0)

    def _enqueue(self, frame: Frame, coalesced_from: int) -> None:
        self._queue.append((frame, coalesced_from))
        self._queued_bytes += len(frame.data(self.codec, self._encoder))
        if len(self._queue) > self._max_frames or self._queued_bytes > self._max_bytes:
            self._overflow()
        self._wake.set()
        if self._prepared is not None and self._writer is None:
            with contextlib.suppress(RuntimeError):  # no running loop yet: start() does it
                self._start_writer()

    def _overflow(self) -> None:
        if self._policy == "coalesce" and self._coalesce():
            return
        self._metrics.slow_disconnects += 1
        log.info("slow consumer disconnected", extra={"connectionId": self.id})
        self.shutdown(CLOSE_SLOW_CONSUMER, "slow consumer")

    def _coalesce(self) -> bool:
        from .hub import Frame

        controls = [e for e in self._queue if e[0].kind == FrameKind.CONTROL]
        events = [e for e in self._queue if e[0].kind == FrameKind.EVENTS]
        if len(events) < 2:
            return False
        first = events[0][1] or events[0][0].seq
        merged = coalesce_payloads([f for f, _ in events])
        frame = Frame(events[-1][0].seq, FrameKind.EVENTS, merged)
        size = len(frame.data(self.codec, self._encoder))
        # The hard bound: one merged frame that alone exceeds the byte budget cannot be helped.
        if size > self._max_bytes:
            return False
        self._metrics.coalesced += 1
        self._queue = deque([*controls, (frame, first)])
        self._queued_bytes = sum(len(f.data(self.codec, self._encoder)) for f, _ in self._queue)
        return True

    def shutdown(self, code: int, reason: str) -> None:
        """Close from the server side: now on the prepared path, else via the writer."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._queue.clear()
        self._queued_bytes = 0
        if self._prepared is not None:
            self._prepared.close_now(code, reason)
            self.closed.set()
        else:
            self._pending_close = (code, reason)
        self._wake.set()

    def _mark_closed(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self._queue.clear()
        self.closed.set()
        self._wake.set()

    # -- the writer task -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.close_code is not None:
                    pending = getattr(self, "_pending_close", None)
                    if pending is not None:
                        with contextlib.suppress(Exception):
                            await self._close(*pending)
                    self.closed.set()
                    return
                while self._queue and self.close_code is None:
                    # Taken off before the write: a coalesce meanwhile must not merge a frame
                    # that is already on its way.
                    frame, coalesced_from = self._queue.popleft()
                    self._queued_bytes -= len(frame.data(self.codec, self._encoder))
                    self._in_flight = True
                    try:
                        if coalesced_from:
                            # Tells the client the next frame stands for seqs coalesced_from..seq.
                            await self._write(coalesced_note(frame.seq, coalesced_from))
                        await self._write(frame)
                    finally:
                        self._in_flight = False
        except Exception:
            self._mark_closed(1006)

    async def _write(self, frame: Frame) -> None:
        prepared = self._prepared
        if prepared is not None:
            # Same bound as the direct path: fill the transport up to max_bytes, then wait.
            if prepared.buffered() >= self._max_bytes:
                await prepared.wait_writable()
            if not prepared.send(frame.wire(self.codec, self._encoder)):
                self._mark_closed(1006)
        else:
            await self._send_bytes(frame.data(self.codec, self._encoder))
        self._metrics.frames_sent += 1
