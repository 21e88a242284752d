"""The broker seam: where an org's events get their positions, and where history is kept.

Every event published into an org takes the next position of that org's one sequence; an
`epoch` names the sequence (a new one only when its history is lost). Finance writes and the
publish endpoint hand events to the broker; the broker hands them, numbered and in order, to its
sink (the hub) as batches, and serves the history a resuming client asks for. The hub knows
positions, not where they come from: `LocalBroker` numbers them in this process (the embedded
default), `RedisBroker` (redis_broker.py) in Redis, where every instance agrees.

The wire form of a batch (what Redis stores and publishes) lives here too, so that both
implementations and their tests read one format.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ..events import Event

logger = logging.getLogger("streamcore_server.realtime.broker")


class HistoryUnavailable(Exception):
    """The history cannot be read right now (the store is unreachable)."""


@dataclass(slots=True)
class Batch:
    """Events of one org at consecutive positions first, first + 1, ...

    A loss marker (`lost` > 0, no events) takes one position: events of committed writes that
    never reached the history; a client whose range covers it must reload.
    """

    first: int
    events: list[Event]
    lost: int = 0

    @property
    def last(self) -> int:
        return self.first + max(len(self.events), 1 if self.lost else 0) - 1


@dataclass(slots=True)
class History:
    """What the broker holds of an org after some position: its epoch, its newest position,
    and the batches after that position (the first may start before it)."""

    epoch: str | None  # None: the org has no sequence (never published, or its history was lost)
    top: int
    batches: list[Batch] = field(default_factory=list)

    def covers(self, after: int) -> bool:
        """True when every position after `after` up to top is here."""
        if after >= self.top:
            return True
        return bool(self.batches) and self.batches[0].first <= after + 1


@dataclass(slots=True)
class Position:
    """An org's sequence as the broker knows it now: its epoch and newest position."""

    epoch: str
    top: int


class BatchSink(Protocol):
    """What a broker delivers to (the hub)."""

    def on_batch(self, org_id: int, epoch: str, batch: Batch) -> None: ...

    def on_reset(self, org_id: int, epoch: str, position: int, reason: str) -> None: ...


def new_epoch() -> str:
    return secrets.token_hex(6)


# -- the wire form of a batch -----------------------------------------------------------------


def encode_events(events: list[Event]) -> bytes:
    """Heads (one JSON line) then the payloads back to back: a batch without its position.

    One message per org and batch, not per event: the receiver parses one header per batch,
    which halved the fan-out's CPU per event at thousands of events a second (measured).
    """
    heads = [[e.property_id, e.key, e.conflatable, e.version, len(e.payload)] for e in events]
    return orjson.dumps(heads) + b"\n" + b"".join(e.payload for e in events)


def encode_lost(n: int) -> bytes:
    return orjson.dumps({"lost": n}) + b"\n"


def decode_batch(org_id: int, body: bytes, first: int) -> Batch:
    """The inverse of encode_events / encode_lost, for the batch at position `first`."""
    head, _, payloads = body.partition(b"\n")
    heads = orjson.loads(head)
    if isinstance(heads, dict):
        lost = heads.get("lost")
        if not isinstance(lost, int) or lost < 1 or payloads:
            raise ValueError("bad loss marker")
        return Batch(first, [], lost)
    events = []
    at = 0
    for property_id, key, conflatable, version, size in heads:
        events.append(
            Event(org_id, key, conflatable, payloads[at : at + size], property_id, version)
        )
        at += size
    if at != len(payloads) or not events:
        raise ValueError(f"batch message: {len(payloads) - at} bytes beyond its events")
    return Batch(first, events)


def by_org(events: Iterable[Event]) -> dict[int, list[Event]]:
    """Group events by org, keeping each org's order (the only order a sequence has)."""
    groups: dict[int, list[Event]] = {}
    for e in events:
        groups.setdefault(e.org_id, []).append(e)
    return groups


# -- in one process ---------------------------------------------------------------------------


class _OrgLog:
    __slots__ = ("batches", "events", "top", "touched")

    def __init__(self) -> None:
        self.top = 0
        # (first position, events, the batch in its wire form). Encoded, not the Event objects:
        # a payload from orjson keeps a 4 KB allocation whatever its length (measured: 10,000
        # events of 32 bytes held 39 MB), and the history keeps thousands per org.
        self.batches: deque[tuple[int, int, bytes]] = deque()
        self.events = 0  # events the batches hold
        self.touched = 0.0


class LocalBroker:
    """Positions and history in this process: one epoch per process life.

    History keeps each org's newest `history_events` events; an org quiet for `history_age_s`
    loses its history (as Redis expires it), the position counter stays.

    Started on a loop, `publish` queues and the end of the loop turn hands each org's queued
    events to the hub as one batch, encoded once for the history: per event, a batch, a history
    entry and a delivery cost 3.1 µs; per turn's group they cost a tenth of that at 10 events
    per org and turn (measured). Not started (a test's hub on a moved clock), it delivers at once.
    """

    def __init__(self, sink: BatchSink, *, history_events: int, history_age_s: float) -> None:
        self.epoch = new_epoch()
        self._sink = sink
        self._history_events = history_events
        self._history_age_s = history_age_s
        self._logs: dict[int, _OrgLog] = {}
        self.clock = time.monotonic  # replaceable: tests move time without sleeping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[Event] = []  # published this loop turn, not yet numbered

    def _log(self, org_id: int) -> _OrgLog:
        log = self._logs.get(org_id)
        if log is None:
            log = self._logs[org_id] = _OrgLog()
        return log

    def publish(self, event: Event) -> None:
        """The EventBus sink: number the event within this loop turn (never raises)."""
        if self._loop is None:
            self._append(event.org_id, [event])
            return
        if not self._queue:
            self._loop.call_soon(self._deliver_queued)
        self._queue.append(event)

    def _deliver_queued(self) -> None:
        queued, self._queue = self._queue, []
        for org_id, group in by_org(queued).items():
            try:
                self._append(org_id, group)
            except Exception:
                # Committed writes: one org's failure must not take the others' events with it.
                logger.exception("realtime batch failed", extra={"orgId": org_id, "n": len(group)})

    def publish_many(self, events: list[Event]) -> None:
        self._deliver_queued()  # what was published before these comes first
        for org_id, group in by_org(events).items():
            self._append(org_id, group)

    async def publish_now(self, events: list[Event]) -> None:
        self.publish_many(events)

    def _append(self, org_id: int, events: list[Event]) -> None:
        log = self._log(org_id)
        now = self.clock()
        if log.batches and now - log.touched > self._history_age_s:
            log.batches.clear()
            log.events = 0
        log.touched = now
        batch = Batch(log.top + 1, events)
        log.top += len(events)
        log.batches.append((batch.first, len(events), encode_events(events)))
        log.events += len(events)
        while log.events - log.batches[0][1] >= self._history_events:
            log.events -= log.batches.popleft()[1]
        self._sink.on_batch(org_id, self.epoch, batch)

    async def join(self, org_id: int) -> Position:
        self._deliver_queued()
        return Position(self.epoch, self._log(org_id).top)

    def leave(self, org_id: int) -> None:
        """Nothing to route in one process."""

    async def history(self, org_id: int, after: int) -> History:
        self._deliver_queued()
        log = self._logs.get(org_id)
        if log is None:
            return History(self.epoch, 0)
        if log.batches and self.clock() - log.touched > self._history_age_s:
            log.batches.clear()
            log.events = 0
        batches = [
            decode_batch(org_id, body, first)
            for first, n, body in log.batches
            if first + n - 1 > after
        ]
        return History(self.epoch, log.top, batches)

    def history_bytes(self) -> int:
        """Bytes the resume history holds: each kept batch and its tuple."""
        total = 0
        for log in self._logs.values():
            total += sys.getsizeof(log.batches)
            total += sum(sys.getsizeof(b) + sys.getsizeof(b[2]) for b in log.batches)
        return total

    async def start(self) -> None:
        """Nothing to connect to: publishing from now on waits for the end of the loop turn."""
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Deliver what is queued; from now on publishing delivers at once."""
        self._deliver_queued()
        self._loop = None
