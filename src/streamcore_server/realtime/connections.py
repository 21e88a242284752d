"""One subscriber: a bounded send queue drained by its own writer, and the slow-consumer policy.

A connection whose socket keeps up is a member of its channel's broadcast (streamcore.Broadcast):
the flusher writes each frame to it from C and this object is not involved at all. One that lags
(its transport holds `max_bytes`) leaves the broadcast and queues frames here, bounded in frames
and bytes, drained by its own writer task; once the queue is empty it rejoins. Over the bound,
`coalesce` merges what waits into one frame (re-conflated by key, every non-conflatable event
kept) and `disconnect` closes with 1013.

A resuming connection holds: the live frames that arrive while the hub reads what it missed wait
in `_held`, and go out behind the replay (release).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from streamcore import Codec, FrameEncoder, FrameKind

from .frames import Frame, coalesce
from .ws_protocol import PreparedSender

if TYPE_CHECKING:
    from .hub import Channel, RealtimeMetrics, Subscribers

log = logging.getLogger("streamcore_server.realtime")

CLOSE_SLOW_CONSUMER = 1013  # "try again later": the client reconnects and resumes
CLOSE_SHUTDOWN = 1012  # "service restart"
CLOSE_POLICY = 1008


class Connection:
    """A subscriber of one channel."""

    # Slots, not a __dict__: thousands of idle connections each keep one of these.
    __slots__ = (
        "_close",
        "_encoder",
        "_held",
        "_in_flight",
        "_max_bytes",
        "_max_frames",
        "_metrics",
        "_pending_close",
        "_policy",
        "_prepared",
        "_queue",
        "_queued_bytes",
        "_rebase",
        "_send_bytes",
        "_wake",
        "_writer",
        "channel",
        "close_code",
        "codec",
        "group",
        "id",
        "org_id",
        "user_id",
    )

    def __init__(
        self,
        conn_id: str,
        user_id: int,
        org_id: int,
        codec: Codec,
        *,
        prepared: PreparedSender | None,
        send_bytes: Callable[[bytes], Awaitable[None]] | None,
        close: Callable[[int, str], Awaitable[None]] | None,
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
        self.group: Subscribers | None = None  # the channel's subscribers of this codec
        self._prepared = prepared
        # The ASGI sends, used only without `prepared` (a parked connection has no ASGI side).
        self._send_bytes = send_bytes
        self._close = close
        self._policy = policy
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._encoder = encoder
        # Made on the first frame that has to wait, with the writer that drains them: an idle or
        # caught-up connection keeps neither (a deque and an Event with its own are ~1.7 KB).
        self._queue: deque[Frame] | None = None
        self._held: list[Frame] | None = None  # while a resume is read (hold .. release)
        self._rebase: int | None = None  # the first_seq the next events frame must carry
        self._queued_bytes = 0
        self._wake: asyncio.Event | None = None
        self.close_code: int | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pending_close: tuple[int, str] | None = None  # the ASGI path's close, for the writer
        # The writer holds a frame it took off the queue: the direct path must wait behind it.
        self._in_flight = False

    @property
    def transport(self) -> Any:
        """The transport a broadcast may write to directly, or None (ASGI sends only)."""
        return self._prepared.transport if self._prepared is not None else None

    def caught_up(self) -> bool:
        """True when nothing of this connection waits: the next frame may be written at once."""
        return (
            self._prepared is not None
            and self.close_code is None
            and not self._queue
            and not self._in_flight
            and self._held is None
            and self._rebase is None
        )

    def start(self) -> None:
        # The writer task exists only on the paths that need one: ASGI sends, or a lagging socket
        # (an idle connection on the prepared path costs no task).
        if self._prepared is None or self._queue:
            self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            if self._wake is None:
                self._wake = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _wake_writer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    # -- called synchronously by the flusher ---------------------------------------------------

    def deliver(self, frame: Frame) -> None:
        """Send the frame now if the socket keeps up, else queue it (bounded).

        The flusher calls this only for connections outside the broadcast (lagging, closing,
        ASGI-only) and for control frames; a caught-up one writes and rejoins the broadcast.
        """
        if self.close_code is not None:
            return
        if self._held is not None:
            self._held.append(frame)
            return
        if self._rebase is not None and frame.kind == FrameKind.EVENTS:
            frame, self._rebase = frame.rebased(self._rebase), None
        prepared = self._prepared
        if prepared is not None and self.caught_up() and prepared.buffered() < self._max_bytes:
            if not prepared.send(frame.wire(self.codec, self._encoder)):
                self._mark_closed(1006)
                return
            self._metrics.frames_sent += 1
            if self.group is not None:
                self.group.catch_up(self)
            return
        self._enqueue(frame)

    def send_control(self, frame: Frame) -> None:
        """Send a control frame (hello, reset) in order; never coalesced away."""
        if self.close_code is None and self._prepared is not None:
            self.deliver(frame)
        elif self.close_code is None:
            if self._held is not None:
                self._held.append(frame)
            else:
                self._enqueue(frame)

    # -- resume: hold the live frames while the missed ones are read ----------------------------

    def hold(self) -> None:
        self._held = []
        if self.group is not None:
            self.group.lag(self)

    def drop_held_through(self, seq: int) -> None:
        """Forget held event frames the client already has (it saw them on another instance)."""
        if self._held:
            self._held = [f for f in self._held if f.kind != FrameKind.EVENTS or f.seq > seq]

    def first_held_events(self) -> Frame | None:
        for frame in self._held or ():
            if frame.kind == FrameKind.EVENTS:
                return frame
        return None

    def drop_first_held_events(self) -> None:
        held = self._held or []
        for i, frame in enumerate(held):
            if frame.kind == FrameKind.EVENTS:
                del held[i]
                return

    def release(self, replay: list[Frame], rebase: int | None) -> None:
        """Send the replay, then what was held; `rebase`: the next events frame's first_seq."""
        held, self._held = self._held or [], None
        self._rebase = rebase
        for frame in (*replay, *held):
            self.deliver(frame)
        if self.group is not None and self.caught_up():
            self.group.catch_up(self)

    def _enqueue(self, frame: Frame) -> None:
        if self.group is not None:
            self.group.lag(self)  # out of the broadcast until the queue has drained
        if self._queue is None:
            self._queue = deque()
        self._queue.append(frame)
        self._queued_bytes += len(frame.data(self.codec, self._encoder))
        if len(self._queue) > self._max_frames or self._queued_bytes > self._max_bytes:
            self._overflow()
        if self._wake is None:
            self._wake = asyncio.Event()
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
        queue = list(self._queue or ())
        # Only the event frames after the last control one: a reset between two frames means
        # they belong to different stretches of the sequence, and merging must not hide it.
        cut = max((i for i, f in enumerate(queue) if f.kind == FrameKind.CONTROL), default=-1) + 1
        head, events = queue[:cut], queue[cut:]
        if len(events) < 2:
            return False
        # One frame covering the whole range: the header says so, no note needed.
        frame = coalesce(events)
        size = len(frame.data(self.codec, self._encoder))
        # The hard bound: one merged frame that alone exceeds the byte budget cannot be helped.
        if size > self._max_bytes:
            return False
        self._metrics.coalesced += 1
        self._queue = deque([*head, frame])
        self._queued_bytes = sum(len(f.data(self.codec, self._encoder)) for f in self._queue)
        return True

    def shutdown(self, code: int, reason: str) -> None:
        """Close from the server side: now on the prepared path, else via the writer."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._queue = None
        self._queued_bytes = 0
        if self.group is not None:
            self.group.lag(self)  # deliver() ignores it from now on; the broadcast must too
        if self._prepared is not None:
            self._prepared.close_now(code, reason)
        else:
            self._pending_close = (code, reason)
        self._wake_writer()

    def _mark_closed(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if self.group is not None:
            self.group.lag(self)
        self._queue = None
        self._wake_writer()

    # -- the writer task -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        wake = self._wake
        assert wake is not None, "made by _start_writer"
        try:
            while True:
                await wake.wait()
                wake.clear()
                if self.close_code is not None:
                    if self._pending_close is not None and self._close is not None:
                        with contextlib.suppress(Exception):
                            await self._close(*self._pending_close)
                    return
                while self._queue and self.close_code is None:
                    # Taken off before the write: a coalesce meanwhile must not merge a frame
                    # that is already on its way.
                    frame = self._queue.popleft()
                    self._queued_bytes -= len(frame.data(self.codec, self._encoder))
                    self._in_flight = True
                    try:
                        await self._write(frame)
                    finally:
                        self._in_flight = False
                if self.group is not None and self.caught_up():
                    self.group.catch_up(self)  # drained: the broadcast writes to it again
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
            assert self._send_bytes is not None, "an ASGI-only connection has send_bytes"
            await self._send_bytes(frame.data(self.codec, self._encoder))
        self._metrics.frames_sent += 1
