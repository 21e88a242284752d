"""The hub: one per process. Channels, their windows and the flusher.

broker (positions) -> Hub.on_batch -> the channel's Conflator -> WindowScheduler -> flush: encode
once per codec in use -> the same bytes to every subscriber of that codec.

A frame covers a range of positions of its org's one sequence (docs/PROTOCOL.md): the broker
numbers events, this process only windows them, so a client can resume on any instance. The hub
knows no Redis and no sockets: it is handed batches, and asks its source (the broker) for
history when a client resumes.

The flusher is a timer callback on the event loop set for `scheduler.next_deadline()`, not a task
that polls: a flush touches only the channels whose window is due, so 100,000 quiet orgs cost
memory, not CPU. The monotonic clock (loop.time()) is read here, never in streamcore.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streamcore import (
    Broadcast,
    Codec,
    Conflator,
    FrameEncoder,
    FrameKind,
    Histogram,
    WindowScheduler,
)

from ..events import Event
from .broker import Batch, History, HistoryUnavailable, Position
from .frames import Frame, Key

log = logging.getLogger("streamcore_server.realtime")

ChannelKey = tuple[int, frozenset[int] | None]  # (org, properties or None for the whole org)
SWEEP_CHUNK = 5_000  # channels looked at per event-loop turn by the sweeper (~5 ms, measured)
SWEEP_INTERVAL_S = 60.0  # idle windows freed this often; not so often that 100,000 show in CPU


@dataclass
class RealtimeMetrics:
    """Counters of this process (exported by whatever scrapes app.state.hub.metrics)."""

    events_in: int = 0
    events_out: int = 0  # events put into frames, after conflation
    frames_flushed: int = 0
    frames_sent: int = 0
    connections: int = 0
    refused_user_cap: int = 0
    refused_org_cap: int = 0
    refused_auth: int = 0
    refused_bad_request: int = 0
    refused_unavailable: int = 0  # the caps' store (Redis) did not answer at the handshake
    slow_disconnects: int = 0
    coalesced: int = 0
    resumes: int = 0
    resets: int = 0
    reset_reasons: dict[str, int] = field(default_factory=dict)
    stale_dropped: int = 0  # versioned states older than one the channel already took


class Subscribers:
    """A channel's subscribers of one codec: the caught-up ones, written to by one C loop per
    frame, and the rest (lagging, closing, or with no prepared transport) by their own queues."""

    __slots__ = ("fast", "slow")

    def __init__(self) -> None:
        self.fast = Broadcast()
        self.slow: set[Any] = set()

    def __len__(self) -> int:
        return len(self.fast) + len(self.slow)

    def __iter__(self) -> Iterator[Any]:
        yield from self.fast.members
        yield from self.slow

    def add(self, conn: Any) -> None:
        transport = getattr(conn, "transport", None)
        if transport is not None and conn.caught_up():
            self.fast.add(conn, transport)
        else:
            self.slow.add(conn)

    def discard(self, conn: Any) -> None:
        if not self.fast.discard(conn):
            self.slow.discard(conn)

    def lag(self, conn: Any) -> None:
        """Take a connection out of the broadcast: its frames go through deliver() now."""
        if self.fast.discard(conn):
            self.slow.add(conn)

    def catch_up(self, conn: Any) -> None:
        """Put a connection whose queue has drained back into the broadcast."""
        if conn in self.slow:
            self.slow.discard(conn)
            self.fast.add(conn, conn.transport)

    def deliver(self, frame: Frame, codec: Codec, encoder: FrameEncoder, limit: int) -> int:
        """Hand a frame to everyone; return how many the broadcast wrote (the rest count own)."""
        slow = tuple(self.slow)
        sent = 0
        if len(self.fast):
            rest = self.fast.send(frame.wire(codec, encoder), limit)
            sent = len(self.fast) - len(rest)
            for conn in rest:  # closing or over its buffer: its own path decides
                self.lag(conn)
                conn.deliver(frame)
        for conn in slow:
            conn.deliver(frame)
        return sent


class OrgStream:
    """Where an org's sequence stands in this process: its epoch and the newest position taken."""

    __slots__ = ("channels", "epoch", "position", "users")

    def __init__(self, epoch: str, position: int) -> None:
        self.epoch = epoch
        self.position = position
        self.channels: list[Channel] = []  # the whole org's and its narrowed ones
        self.users = 0  # subscribers joined (and not yet left) through the source


class Channel:
    """An org's stream (or a narrowing of it to some properties): its window and subscribers.

    `seq` is the newest position of the org's sequence this channel has framed: its next frame
    covers seq + 1 .. the org's position at that flush, whichever of those events it selects.
    """

    __slots__ = (
        "conflator",
        "key",
        "opened_ms",
        "org",
        "org_id",
        "properties",
        "sched_id",
        "seq",
        "subscribers",
        "versions",
    )

    def __init__(self, sched_id: int, key: ChannelKey, org: OrgStream) -> None:
        self.sched_id = sched_id
        self.key = key
        self.org_id, self.properties = key
        self.org = org
        self.seq = org.position
        # None while the channel is idle: the sweeper frees it, the next event makes a new one.
        self.conflator: Conflator | None = Conflator()
        self.subscribers: dict[Codec, Subscribers] = {}
        self.opened_ms: float | None = None  # first event of the pending window (metrics)
        self.versions: dict[str, int] = {}  # the newest version taken, per versioned key

    @property
    def epoch(self) -> str:
        return self.org.epoch

    @property
    def name(self) -> str:
        if self.properties is None:
            return f"org:{self.org_id}"
        props = ",".join(str(p) for p in sorted(self.properties))
        return f"org:{self.org_id}/properties:{props}"

    def pending(self) -> int:
        return len(self.conflator) if self.conflator is not None else 0

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self.subscribers.values())

    def control(self, message: dict[str, Any]) -> Frame:
        return Frame(self.seq, self.seq, FrameKind.CONTROL, [orjson.dumps(message)])

    def reset_message(self, reason: str) -> dict[str, Any]:
        return {
            "type": "reset",
            "channel": self.name,
            "epoch": self.epoch,
            "seq": self.seq,
            "reason": reason,
        }

    def selects(self, event: Event) -> bool:
        return self.properties is None or event.property_id in self.properties


class Source(Protocol):
    """Where the hub's events come from (a broker): routing per org, and history for resume."""

    async def join(self, org_id: int) -> Position: ...

    def leave(self, org_id: int) -> None: ...

    async def history(self, org_id: int, after: int) -> History: ...


class ResumeFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


RESUME_WAIT_S = 2.0  # how long a resume waits for this instance to reach the client's position
REPLAY_FRAME_EVENTS = 1000  # events conflated into one replayed frame, at most


class Hub:
    """Channels of this process and the timer that flushes them (the broker's BatchSink)."""

    def __init__(
        self,
        *,
        window_min_ms: float,
        window_max_ms: float,
        compression_threshold: int,
        zstd_level: int,
        send_buffer_limit: int = 1 << 20,
        flush_budget: float = 0.4,
    ) -> None:
        # A socket holding this many unsent bytes leaves the broadcast and queues (its policy).
        self.send_buffer_limit = send_buffer_limit
        self.scheduler = WindowScheduler(window_min_ms, window_max_ms, flush_budget=flush_budget)
        self.encoder = FrameEncoder(compression_threshold, zstd_level)
        self.metrics = RealtimeMetrics()
        # Seconds, read by streamcore_server.metrics once per scrape: a window's first event -> its
        # flush, and
        # -> its frame handed to every socket (the frame's oldest event, so its worst case).
        self.window_lengths = Histogram()
        self.delivery = Histogram()
        self.source: Source | None = None  # set by whoever makes the broker (realtime.start)
        self.instance = ""  # named in hello, so a client (and an operator) knows where it is
        # What a flush costs, in ns of this thread's CPU; a test on a moved clock fixes it, or
        # the real cost (which the machine's load moves) would size its windows.
        self.cpu_clock = time.thread_time_ns
        self._orgs: dict[int, OrgStream] = {}
        self._channels: dict[ChannelKey, Channel] = {}
        self._by_sched: dict[int, Channel] = {}
        self._next_sched_id = 1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Handle | None = None
        self._sweep_queue: list[Channel] = []
        self._flushed: dict[ChannelKey, asyncio.Event] = {}  # resumes waiting for a flush
        self.connections: set[Any] = set()

    sweep_interval_s = SWEEP_INTERVAL_S

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sweeper = loop.call_later(self.sweep_interval_s, self._sweep_timer)

    def _sweep_timer(self) -> None:
        self._sweep_queue = list(self._channels.values())
        self._sweep_step()

    def _sweep_step(self) -> None:
        # A chunk per loop turn: one pass over 100,000 channels took 63 ms, a stall every minute.
        assert self._loop is not None
        chunk = self._sweep_queue[-SWEEP_CHUNK:]
        del self._sweep_queue[-SWEEP_CHUNK:]
        try:
            self.sweep(chunk)
        finally:
            if self._sweep_queue:
                self._sweeper = self._loop.call_soon(self._sweep_step)
            else:
                self._sweeper = self._loop.call_later(self.sweep_interval_s, self._sweep_timer)

    def sweep(self, channels: Iterable[Channel] | None = None) -> int:
        """Free the window of every channel that has nothing pending; return how many.

        At 100,000 channels the collector's full pass grows with every object a channel keeps;
        a channel without subscribers is dropped when its last one leaves, not here.
        """
        freed = 0
        for ch in self._channels.values() if channels is None else channels:
            idle = ch.conflator is not None and not ch.pending()
            if idle and not self.scheduler.is_active(ch.sched_id):
                ch.conflator = None
                freed += 1
        return freed

    def now_ms(self) -> float:
        assert self._loop is not None, "Hub.bind(loop) first"
        return self._loop.time() * 1000.0

    # -- channels ------------------------------------------------------------------------------

    def channel(self, key: ChannelKey) -> Channel | None:
        return self._channels.get(key)

    def _open_channel(self, key: ChannelKey, org: OrgStream) -> Channel:
        ch = self._channels.get(key)
        if ch is None:
            ch = Channel(self._next_sched_id, key, org)
            self._next_sched_id += 1
            self._channels[key] = ch
            self._by_sched[ch.sched_id] = ch
            org.channels.append(ch)
        return ch

    def _drop_channel(self, ch: Channel) -> None:
        self.scheduler.forget(ch.sched_id)
        del self._channels[ch.key]
        del self._by_sched[ch.sched_id]
        ch.org.channels.remove(ch)
        if not ch.org.channels and not ch.org.users:
            del self._orgs[ch.org_id]

    # -- events in (the broker's sink) -----------------------------------------------------------

    def on_batch(self, org_id: int, epoch: str, batch: Batch) -> None:
        """Take a batch of the org's sequence: the events at positions batch.first.."""
        org = self._orgs.get(org_id)
        if org is None:
            return  # nobody here watches this org
        if epoch != org.epoch:
            self.on_reset(org_id, epoch, batch.first - 1, "history_lost")
        if batch.last <= org.position:
            return  # already taken
        if batch.first > org.position + 1:
            # The broker delivers in order or resets first; a hole here is a bug, not a wait.
            self.on_reset(org_id, epoch, batch.first - 1, "events_lost")
        events = batch.events
        if batch.first <= org.position:
            events = events[org.position + 1 - batch.first :]
        org.position = batch.last
        now = None
        for ch in org.channels:
            conflator = ch.conflator
            pushed = False
            for event in events:
                if ch.properties is not None and event.property_id not in ch.properties:
                    continue
                if event.version is not None and event.key is not None:
                    if event.version <= ch.versions.get(event.key, -1):
                        self.metrics.stale_dropped += 1
                        continue  # a newer snapshot of this entity is already in the stream
                    ch.versions[event.key] = event.version
                if conflator is None:  # made on the first event: an idle channel holds none
                    conflator = ch.conflator = Conflator()
                conflator.push(
                    event.key if event.conflatable else None, event.payload, event.conflatable
                )
                pushed = True
            if pushed:  # once per channel and batch, not per event
                if now is None:
                    now = self.now_ms()
                if ch.opened_ms is None:
                    ch.opened_ms = now
                if self.scheduler.touch(ch.sched_id, now):
                    self._arm()
        self.metrics.events_in += len(events)

    def on_reset(self, org_id: int, epoch: str, position: int, reason: str) -> None:
        """The org's sequence is not continuous here: its subscribers must reload."""
        org = self._orgs.get(org_id)
        if org is None:
            return
        org.epoch, org.position = epoch, position
        reasons = self.metrics.reset_reasons
        for ch in org.channels:
            if ch.conflator is not None:
                ch.conflator.drain()  # what the old sequence had pending is not to be trusted
            ch.opened_ms = None
            ch.seq = position
            msg = ch.control(ch.reset_message(reason))
            for subs in ch.subscribers.values():
                for conn in tuple(subs):
                    self.metrics.resets += 1
                    reasons[reason] = reasons.get(reason, 0) + 1
                    conn.send_control(msg)

    # -- the flusher ---------------------------------------------------------------------------

    def _arm(self) -> None:
        deadline = self.scheduler.next_deadline()
        if deadline is None or self._loop is None:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        # Rounded up to a whole millisecond: uvloop's clock counts whole milliseconds, so a timer
        # for a fractional deadline fires while loop.time() is still below it, finds nothing due
        # and re-arms itself until the clock ticks over (16,000 empty flushes a second, measured).
        # The 1 ns slack keeps float noise in a deadline from moving it a whole ms later.
        self._timer = self._loop.call_at(math.ceil(deadline - 1e-6) / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        # The flush's own CPU (this thread's, not the wall clock another process may steal)
        # sizes the windows: they widen when flushing costs more than its budget of a core.
        started = self.cpu_clock()
        try:
            self.flush_due()
        except Exception:
            log.exception("flush failed")
        self.scheduler.observe_flush(self.now_ms(), (self.cpu_clock() - started) / 1e6)
        self._arm()

    def flush_due(self) -> int:
        """Flush every channel whose window is due; return the number of frames built."""
        now = self.now_ms()
        built = 0
        for sched_id in self.scheduler.due_list(now):
            ch = self._by_sched.get(sched_id)
            if ch is None or ch.conflator is None:
                continue
            payloads, keys = ch.conflator.drain_keyed()
            if payloads:
                self._emit(ch, payloads, keys, now)
                built += 1
        return built

    def _emit(self, ch: Channel, payloads: list[bytes], keys: list[Key], now: float) -> None:
        first, ch.seq = ch.seq + 1, ch.org.position
        self.metrics.frames_flushed += 1
        self.metrics.events_out += len(payloads)
        if ch.subscribers:
            codecs = [c for c, subs in ch.subscribers.items() if subs]
            data = self.encoder.encode_many(ch.seq, payloads, codecs, first_seq=first)
            frame = Frame(
                first,
                ch.seq,
                FrameKind.EVENTS,
                payloads,
                {int(c): b for c, b in data.items()},
                keys,
            )
            limit = self.send_buffer_limit
            for codec, subs in ch.subscribers.items():
                self.metrics.frames_sent += subs.deliver(frame, codec, self.encoder, limit)
            frame.settle()
        if ch.opened_ms is not None:
            self.window_lengths.record(max(0.0, now - ch.opened_ms) / 1000.0)
            self.delivery.record(max(0.0, self.now_ms() - ch.opened_ms) / 1000.0)
            ch.opened_ms = None
        waiting = self._flushed.pop(ch.key, None)
        if waiting is not None:
            waiting.set()

    # -- subscribers ---------------------------------------------------------------------------

    async def subscribe(
        self,
        conn: Any,
        properties: frozenset[int] | None,
        resume_epoch: str | None,
        resume_seq: int | None,
    ) -> Channel:
        """Attach a connection: hello, then what it missed (or a reset), then the live stream.

        Raises HistoryUnavailable when the org's sequence cannot be joined (the broker is away).
        """
        assert self.source is not None, "a source (broker) first"
        org_id = conn.org_id
        position = await self.source.join(org_id)
        org = self._orgs.get(org_id)
        if org is None:
            org = self._orgs[org_id] = OrgStream(position.epoch, position.top)
        org.users += 1
        ch = self._open_channel((org_id, properties), org)
        conn.channel = ch
        conn.send_control(
            ch.control(
                {
                    "type": "hello",
                    "channel": ch.name,
                    "epoch": ch.epoch,
                    "seq": ch.seq,
                    "codec": conn.codec.name.lower(),
                    "connection_id": conn.id,
                    "instance": self.instance,
                    "protocol": 2,
                }
            )
        )
        if resume_seq is not None:
            conn.hold()  # live frames wait behind what the resume sends
        self._attach(ch, conn)
        if resume_seq is not None:
            self.metrics.resumes += 1
            await self._resume(ch, conn, resume_epoch, resume_seq)
        return ch

    def _attach(self, ch: Channel, conn: Any) -> None:
        group = ch.subscribers.get(conn.codec)
        if group is None:
            group = ch.subscribers[conn.codec] = Subscribers()
        conn.group = group
        group.add(conn)
        self.connections.add(conn)
        self.metrics.connections = len(self.connections)

    async def _resume(self, ch: Channel, conn: Any, epoch: str | None, last_seq: int) -> None:
        start, epoch_now = ch.seq, ch.epoch
        try:
            if epoch != ch.epoch:
                raise ResumeFailed("epoch_changed")
            frames, rebase = await self._catch_up(ch, conn, last_seq, start)
        except ResumeFailed as failed:
            if ch.epoch != epoch_now:
                conn.release([], None)  # a reset is already among the held frames
                return
            self.metrics.resets += 1
            self.metrics.reset_reasons[failed.reason] = (
                self.metrics.reset_reasons.get(failed.reason, 0) + 1
            )
            # The held frames follow `start` contiguously, so the client continues from there.
            conn.release([ch.control({**ch.reset_message(failed.reason), "seq": start})], None)
            return
        conn.release(frames, rebase)

    async def _catch_up(
        self, ch: Channel, conn: Any, at: int, start: int
    ) -> tuple[list[Frame], int | None]:
        """The frames that take a client from `at` to the first frame it holds (or `start`).

        Returns them and, when the range they cover selected no event of this channel, the
        first_seq the next frame must be rebased to (so that the client sees no hole).
        """
        assert self.source is not None
        assert self._loop is not None
        deadline = self._loop.time() + RESUME_WAIT_S
        epoch = ch.epoch
        origin = at
        frames: list[Frame] = []
        while True:
            try:
                history = await self.source.history(ch.org_id, at)
            except HistoryUnavailable:
                raise ResumeFailed("history_unavailable") from None
            if ch.epoch != epoch or self._channels.get(ch.key) is not ch:
                raise ResumeFailed("epoch_changed")
            if history.epoch != epoch:
                raise ResumeFailed("epoch_changed")
            if at > history.top:
                raise ResumeFailed("unknown_seq")
            if not history.covers(at):
                raise ResumeFailed("history_expired")
            # Where the replay ends: at `start`, or, when this instance is behind the one the
            # client came from, where the first frame held since then ends (it is rebuilt).
            end = start
            if at >= start:
                conn.drop_held_through(at)
                head = conn.first_held_events()
                if head is None:
                    if at == start:
                        break
                    await self._wait_flush(ch, deadline)  # the events it saw elsewhere come
                    continue
                if head.first_seq == at + 1:
                    break
                end = head.seq
                conn.drop_first_held_events()
            if end > at:
                built, at = self._replay(ch, history, at, end)
                if built:
                    frames.extend(built)
                elif frames:  # this stretch selected nothing: the previous frame covers it
                    frames[-1] = _widened(frames[-1], at)
            if at >= end and at >= start:
                break
            # The read stopped short (it is bounded), or the held frames moved: go on from `at`.
        if frames or at == origin:
            return frames, None
        return frames, origin + 1

    async def _wait_flush(self, ch: Channel, deadline: float) -> None:
        assert self._loop is not None
        left = deadline - self._loop.time()
        if left <= 0:
            raise ResumeFailed("history_unavailable")
        waiting = self._flushed.get(ch.key)
        if waiting is None:
            waiting = self._flushed[ch.key] = asyncio.Event()
        try:
            await asyncio.wait_for(waiting.wait(), left)
        except TimeoutError:
            raise ResumeFailed("history_unavailable") from None

    def _replay(self, ch: Channel, history: History, at: int, end: int) -> tuple[list[Frame], int]:
        """Frames for positions at+1..end from the history, conflated as live windows would be.

        Returns them and the position they reach (short of end if the history read was).
        """
        frames: list[Frame] = []
        conflator = Conflator()
        versions: dict[str, int] = {}
        first = at + 1
        reached = at
        for batch in history.batches:
            if batch.last <= at:
                continue
            if batch.first > end:
                break
            if batch.lost:
                raise ResumeFailed("events_lost")
            for pos, event in enumerate(batch.events, batch.first):
                if pos <= at:
                    continue
                if pos > end:
                    break
                reached = pos
                if not ch.selects(event):
                    continue
                if event.version is not None and event.key is not None:
                    if event.version <= versions.get(event.key, -1):
                        continue
                    versions[event.key] = event.version
                conflator.push(
                    event.key if event.conflatable else None, event.payload, event.conflatable
                )
                if len(conflator) >= REPLAY_FRAME_EVENTS:
                    frames.append(_events_frame(first, reached, conflator))
                    first = reached + 1
        if len(conflator):
            frames.append(_events_frame(first, reached, conflator))
        elif frames and reached > frames[-1].seq:
            frames[-1] = _widened(frames[-1], reached)  # the tail selected nothing: it covers it
        return frames, reached

    def unsubscribe(self, conn: Any) -> None:
        self.connections.discard(conn)
        self.metrics.connections = len(self.connections)
        ch: Channel | None = conn.channel
        if ch is None:
            return
        subs = ch.subscribers.get(conn.codec)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del ch.subscribers[conn.codec]
        conn.group = None
        conn.channel = None
        ch.org.users -= 1
        if not ch.subscribers and self._channels.get(ch.key) is ch:
            self._drop_channel(ch)
        elif not ch.org.channels and not ch.org.users:
            self._orgs.pop(ch.org_id, None)
        if self.source is not None:
            self.source.leave(ch.org_id)

    def shutdown_connections(self, code: int, reason: str) -> None:
        for conn in tuple(self.connections):
            conn.shutdown(code, reason)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _events_frame(first: int, seq: int, conflator: Conflator) -> Frame:
    payloads, keys = conflator.drain_keyed()
    return Frame(first, seq, FrameKind.EVENTS, payloads, keys=keys)


def _widened(frame: Frame, seq: int) -> Frame:
    return Frame(frame.first_seq, seq, FrameKind.EVENTS, frame.payloads, keys=frame.keys())
