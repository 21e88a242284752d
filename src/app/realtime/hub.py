"""The hub: one per process. Channels, their windows, the flusher and the bounded history.

write -> Hub.ingest -> the channel's Conflator -> WindowScheduler -> flush: encode once per codec
in use -> history -> the same bytes to every subscriber of that codec.

The flusher is a timer callback on the event loop set for `scheduler.next_deadline()`, not a task
that polls: a flush touches only the channels whose window is due, so 100,000 quiet orgs cost
memory, not CPU. The monotonic clock (loop.time()) is read here, never in streamcore.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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
from .frames import Frame

log = logging.getLogger("app.realtime")

ChannelKey = tuple[int, frozenset[int] | None]  # (org, properties or None for the whole org)
SWEEP_CHUNK = 5_000  # channels looked at per event-loop turn by the sweeper (~5 ms, measured)


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
    fanout_interruptions: int = 0
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


class Channel:
    """An org's stream (or a narrowing of it to some properties): seq, window, history."""

    __slots__ = (
        "conflator",
        "epoch",
        "history",
        "key",
        "opened_ms",
        "org_id",
        "properties",
        "sched_id",
        "seq",
        "subscribers",
        "versions",
    )

    def __init__(self, sched_id: int, key: ChannelKey, history_frames: int) -> None:
        self.sched_id = sched_id
        self.key = key
        self.org_id, self.properties = key
        # A new epoch per channel object: seqs of another process or of an earlier life of this
        # channel mean nothing here, and a resume naming them gets `reset`, not a silent gap.
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        # None while the channel is idle: the sweeper frees it, the next event makes a new one.
        # At 100,000 channels the collector's full pass grows with every object a channel keeps.
        self.conflator: Conflator | None = Conflator()
        self.history: deque[Frame] = deque(maxlen=history_frames)
        self.subscribers: dict[Codec, Subscribers] = {}
        self.opened_ms: float | None = None  # first event of the pending window (metrics)
        self.versions: dict[str, int] = {}  # the newest version taken, per versioned key

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
        return Frame(self.seq, FrameKind.CONTROL, [orjson.dumps(message)])

    def reset_message(self, reason: str) -> dict[str, Any]:
        oldest = self.history[0].seq if self.history else self.seq + 1
        return {
            "type": "reset",
            "channel": self.name,
            "epoch": self.epoch,
            "seq": self.seq,
            "oldest_seq": oldest,
            "reason": reason,
        }


class Hub:
    """Channels of this process and the timer that flushes them."""

    def __init__(
        self,
        *,
        window_min_ms: float,
        window_max_ms: float,
        compression_threshold: int,
        zstd_level: int,
        history_frames: int,
        history_age_s: float,
        send_buffer_limit: int = 1 << 20,
        flush_budget: float = 0.4,
    ) -> None:
        # A socket holding this many unsent bytes leaves the broadcast and queues (its policy).
        self.send_buffer_limit = send_buffer_limit
        self.scheduler = WindowScheduler(window_min_ms, window_max_ms, flush_budget=flush_budget)
        self.encoder = FrameEncoder(compression_threshold, zstd_level)
        self.history_frames = history_frames
        self.history_age_s = history_age_s
        self.metrics = RealtimeMetrics()
        # Seconds, read by app.metrics once per scrape: a window's first event -> its flush, and
        # -> its frame handed to every socket (the frame's oldest event, so its worst case).
        self.window_lengths = Histogram()
        self.delivery = Histogram()
        self._channels: dict[ChannelKey, Channel] = {}
        self._by_sched: dict[int, Channel] = {}
        self._narrowed: dict[int, list[Channel]] = {}  # org -> channels narrowed to properties
        self._next_sched_id = 1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Handle | None = None
        self._sweep_queue: list[Channel] = []
        self.connections: set[Any] = set()

    @property
    def sweep_interval_s(self) -> float:
        # Half the history age, but not so often that sweeping 100,000 channels shows in CPU.
        return max(self.history_age_s / 2, 10.0)

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
        """Forget channels nobody watches whose history has aged out; return how many.

        A quiet org then costs nothing at all (~3 KB while it has a channel); a client that
        resumes into a forgotten channel gets `reset` (its epoch is gone), as its history was.
        The timer sweeps in chunks of SWEEP_CHUNK channels; called alone, it sweeps them all.
        """
        horizon = self.now_ms() - self.history_age_s * 1000.0
        stale = []
        for ch in self._channels.values() if channels is None else channels:
            if ch.pending() or self.scheduler.is_active(ch.sched_id):
                continue
            if self._channels.get(ch.key) is not ch:
                continue  # dropped since the chunk was listed
            if not ch.subscribers and (not ch.history or ch.history[-1].t < horizon):
                stale.append(ch)
            else:
                ch.conflator = None  # idle for now: no window open, nothing pending
        for ch in stale:
            self._drop_channel(ch)
        return len(stale)

    def history_bytes(self) -> int:
        """Bytes the resume history holds: every kept frame's bytes and its objects."""
        total = 0
        for ch in self._channels.values():
            total += sys.getsizeof(ch.history)
            for frame in ch.history:
                total += frame.nbytes()
        return total

    def now_ms(self) -> float:
        assert self._loop is not None, "Hub.bind(loop) first"
        return self._loop.time() * 1000.0

    # -- channels ------------------------------------------------------------------------------

    def channel(self, key: ChannelKey, create: bool = True) -> Channel | None:
        ch = self._channels.get(key)
        if ch is None and create:
            ch = Channel(self._next_sched_id, key, self.history_frames)
            self._next_sched_id += 1
            self._channels[key] = ch
            self._by_sched[ch.sched_id] = ch
            if key[1] is not None:
                self._narrowed.setdefault(key[0], []).append(ch)
        return ch

    def _drop_channel(self, ch: Channel) -> None:
        # Narrowed channels go with their last subscriber; org channels when sweep() finds them
        # unwatched and their history expired.
        self.scheduler.forget(ch.sched_id)
        del self._channels[ch.key]
        del self._by_sched[ch.sched_id]
        if ch.properties is not None:
            siblings = self._narrowed[ch.org_id]
            siblings.remove(ch)
            if not siblings:
                del self._narrowed[ch.org_id]

    # -- events in -----------------------------------------------------------------------------

    def ingest(self, event: Event) -> None:
        """Put one event into its org's channels (called by the EventBus or the fan-out)."""
        whole = self._channels.get((event.org_id, None))
        narrowed = self._narrowed.get(event.org_id)
        channels: Iterable[Channel]
        if narrowed is None:
            channels = (whole or self.channel((event.org_id, None)),)  # type: ignore[assignment]
        else:
            channels = narrowed if whole is None else (whole, *narrowed)
        prop = event.property_id
        now = None
        for ch in channels:
            if ch.properties is not None and prop not in ch.properties:
                continue
            if event.version is not None and event.key is not None:
                if event.version <= ch.versions.get(event.key, -1):
                    self.metrics.stale_dropped += 1
                    continue  # a newer snapshot of this entity is already in the stream
                ch.versions[event.key] = event.version
            conflator = ch.conflator
            if conflator is None:
                conflator = ch.conflator = Conflator()
            key = event.key if event.conflatable else None
            conflator.push(key, event.payload, event.conflatable)
            if now is None:
                now = self.now_ms()
            if ch.opened_ms is None:
                ch.opened_ms = now
            if self.scheduler.touch(ch.sched_id, now):
                self._arm()
        self.metrics.events_in += 1

    def ingest_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.ingest(event)

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
        started = time.thread_time_ns()
        try:
            self.flush_due()
        except Exception:
            log.exception("flush failed")
        self.scheduler.observe_flush(self.now_ms(), (time.thread_time_ns() - started) / 1e6)
        self._arm()

    def flush_due(self) -> int:
        """Flush every channel whose window is due; return the number of frames built."""
        now = self.now_ms()
        built = 0
        for sched_id in self.scheduler.due(now).tolist():
            ch = self._by_sched.get(sched_id)
            if ch is None or ch.conflator is None:
                continue
            payloads = ch.conflator.drain()
            if payloads:
                self._emit(ch, payloads, now)
                built += 1
        return built

    def _emit(self, ch: Channel, payloads: list[bytes], now: float) -> None:
        ch.seq += 1
        codecs = [c for c, subs in ch.subscribers.items() if subs] or [Codec.ZSTD]
        data = self.encoder.encode_many(ch.seq, payloads, codecs)
        frame = Frame(ch.seq, FrameKind.EVENTS, payloads, {int(c): b for c, b in data.items()}, now)
        ch.history.append(frame)
        horizon = now - self.history_age_s * 1000.0
        while ch.history and ch.history[0].t < horizon:
            ch.history.popleft()
        self.metrics.frames_flushed += 1
        self.metrics.events_out += len(payloads)
        limit = self.send_buffer_limit
        for codec, subs in ch.subscribers.items():
            self.metrics.frames_sent += subs.deliver(frame, codec, self.encoder, limit)
        frame.settle()
        if ch.opened_ms is not None:
            self.window_lengths.record(max(0.0, now - ch.opened_ms) / 1000.0)
            self.delivery.record(max(0.0, self.now_ms() - ch.opened_ms) / 1000.0)
            ch.opened_ms = None

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(
        self,
        conn: Any,
        properties: frozenset[int] | None,
        resume_epoch: str | None,
        resume_seq: int | None,
    ) -> Channel:
        """Attach a connection: hello, then the frames it missed or a reset (all synchronous)."""
        ch = self.channel((conn.org_id, properties))
        assert ch is not None
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
                }
            )
        )
        if resume_seq is not None:
            self.metrics.resumes += 1
            self._replay(ch, conn, resume_epoch, resume_seq)
        group = ch.subscribers.get(conn.codec)
        if group is None:
            group = ch.subscribers[conn.codec] = Subscribers()
        conn.group = group
        group.add(conn)
        self.connections.add(conn)
        self.metrics.connections = len(self.connections)
        return ch

    def _replay(self, ch: Channel, conn: Any, epoch: str | None, last_seq: int) -> None:
        horizon = self.now_ms() - self.history_age_s * 1000.0
        while ch.history and ch.history[0].t < horizon:
            ch.history.popleft()
        if epoch != ch.epoch:
            reason = "epoch_changed"
        elif last_seq > ch.seq:
            reason = "unknown_seq"
        elif last_seq == ch.seq:
            return
        elif ch.history and ch.history[0].seq <= last_seq + 1:
            for frame in ch.history:
                if frame.seq > last_seq:
                    conn.send_control(frame)  # queued in order, before any new frame
            return
        else:
            reason = "history_expired"
        self.metrics.resets += 1
        conn.send_control(ch.control(ch.reset_message(reason)))

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
        if ch.properties is not None and not ch.subscribers and ch.key in self._channels:
            self._drop_channel(ch)

    def reset_all(self, reason: str) -> None:
        """Tell every subscriber its stream may have lost events (e.g. the fan-out broke)."""
        for ch in list(self._channels.values()):
            msg = ch.control(ch.reset_message(reason))
            for subs in ch.subscribers.values():
                for conn in tuple(subs):
                    self.metrics.resets += 1
                    conn.send_control(msg)

    def shutdown_connections(self, code: int, reason: str) -> None:
        for conn in tuple(self.connections):
            conn.shutdown(code, reason)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
