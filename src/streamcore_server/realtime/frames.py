"""Frames as the hub builds them: one flushed window (or control message), bytes built once.

A Frame holds its events until the broadcast is done, then only its compressed bytes (what a
lagging socket's queue keeps); the slow path (coalescing that queue) rebuilds what it needs.
"""

from __future__ import annotations

import sys

import orjson

from streamcore import Codec, Conflator, FrameEncoder, FrameKind
from streamcore.protocol import decode_frame

from .ws_protocol import ws_header

Key = str | int | None  # what an event conflates on; None: kept as it came


class Frame:
    """One flushed window (or control message), its bytes built lazily once per codec."""

    __slots__ = ("_data", "_keys", "_payloads", "_wire", "first_seq", "kind", "seq")

    def __init__(
        self,
        first_seq: int,
        seq: int,
        kind: int,
        payloads: list[bytes] | None,
        data: dict[int, bytes] | None = None,
        keys: list[Key] | None = None,
    ) -> None:
        self.first_seq = first_seq  # an events frame covers positions first_seq..seq
        self.seq = seq
        self.kind = kind
        self._payloads = payloads
        self._data: dict[int, bytes] = data or {}
        self._wire: dict[Codec, bytes] = {}
        # Each event's conflation key beside it (None: kept as it came), from the conflator that
        # built the frame: re-conflating a lagging socket's queue parses no JSON to find them.
        none: list[Key] = [None] * len(payloads or ())
        self._keys = keys if keys is not None else none

    def rebased(self, first_seq: int) -> Frame:
        """The same events, covering positions from first_seq (after a replay that found none)."""
        return Frame(first_seq, self.seq, self.kind, self.payloads, keys=self._keys)

    def keys(self) -> list[Key]:
        return self._keys

    @property
    def payloads(self) -> list[bytes]:
        """The events, each as encoded JSON (rebuilt from the frame once they were released)."""
        if self._payloads is None:
            events = decode_frame(next(iter(self._data.values()))).events
            self._payloads = [orjson.dumps(e) for e in events]
        return self._payloads

    def nbytes(self) -> int:
        """Memory this frame holds: its objects and the bytes it keeps."""
        total = sys.getsizeof(self) + sys.getsizeof(self._data) + sys.getsizeof(self._wire)
        total += sum(sys.getsizeof(b) for b in self._data.values())
        total += sum(sys.getsizeof(b) for b in self._wire.values())
        if self._payloads is not None:
            total += sys.getsizeof(self._payloads) + sum(sys.getsizeof(p) for p in self._payloads)
        return total

    def settle(self) -> None:
        """Keep only the compressed frames once the broadcast is done (what lagging queues hold).

        The payload list and the WebSocket-wrapped copies are 5-50x the compressed size; the slow
        paths that need them again (replay in another codec, coalescing) rebuild them.
        """
        if self._data:
            self._payloads = None
        self._wire = {}

    def data(self, codec: Codec, encoder: FrameEncoder) -> bytes:
        """The protocol frame for this codec (docs/PROTOCOL.md)."""
        frame = self._data.get(codec)
        if frame is None:
            # Int keys (not the enum) keep the dict of bytes untracked by the collector.
            frame = self._data[int(codec)] = encoder.encode(
                self.seq, self.payloads, codec, self.kind, self.first_seq
            )
        return frame

    def wire(self, codec: Codec, encoder: FrameEncoder) -> bytes:
        """The protocol frame inside its WebSocket header, built once for every socket."""
        wire = self._wire.get(codec)
        if wire is None:
            frame = self.data(codec, encoder)
            wire = self._wire[codec] = ws_header(len(frame)) + frame
        return wire


def coalesce(frames: list[Frame]) -> Frame:
    """Merge several windows into one: conflatable events by key (latest wins), facts all kept."""
    conflator = Conflator()
    for frame in frames:
        for key, payload in zip(frame.keys(), frame.payloads, strict=True):
            conflator.push(key, payload, key is not None)
    payloads, keys = conflator.drain_keyed()
    return Frame(frames[0].first_seq, frames[-1].seq, FrameKind.EVENTS, payloads, keys=keys)
