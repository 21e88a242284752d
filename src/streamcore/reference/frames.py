"""Readable specification of the frame encoder, byte-identical to streamcore._frames.

Frame = protocol.HEADER + body, where body is b"[" + b",".join(payloads) + b"]" (payloads are
already-encoded JSON values, never re-encoded). A body longer than `threshold` bytes is
compressed with the connection's codec, unless compression does not make it smaller; the header's
codec byte says what was actually applied.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import zstandard

from ..errors import StreamcoreTypeError, StreamcoreValueError
from ..protocol import HEADER, MAGIC, MAX_COUNT, MAX_RAW_LENGTH, MAX_SEQ, VERSION, Codec, FrameKind


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StreamcoreTypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def check_settings(threshold: int, zstd_level: int, gzip_level: int) -> None:
    """Validate the encoder settings exactly as the compiled encoder does."""
    if not 0 <= _check_int("threshold", threshold) <= MAX_RAW_LENGTH:
        raise StreamcoreValueError(f"threshold must be in 0..{MAX_RAW_LENGTH}, got {threshold}")
    if not 1 <= _check_int("zstd_level", zstd_level) <= 22:
        raise StreamcoreValueError(f"zstd_level must be in 1..22, got {zstd_level}")
    if not 1 <= _check_int("gzip_level", gzip_level) <= 9:
        raise StreamcoreValueError(f"gzip_level must be in 1..9, got {gzip_level}")


def check_codec(codec: object) -> Codec:
    """Return `codec` as a Codec, or raise naming the problem."""
    value = _check_int("codec", codec)
    if not 0 <= value <= 2:
        raise StreamcoreValueError(f"unknown codec {value}: expected 0 (none), 1 (zstd), 2 (gzip)")
    return Codec(value)


def build_body(
    seq: object, payloads: object, kind: object = 0, first_seq: object = None
) -> tuple[bytes, int]:
    """Validate a window; return its JSON array body and its payload count."""
    if _check_int("seq", seq) < 0 or seq > MAX_SEQ:  # type: ignore[operator]
        raise StreamcoreValueError(f"seq must fit an unsigned 64-bit integer, got {seq}")
    if first_seq is not None:
        _check_int("first_seq", first_seq)
        if not 0 <= first_seq <= seq:  # type: ignore[operator]
            raise StreamcoreValueError(f"first_seq must be in 0..seq ({seq}), got {first_seq}")
    if not 0 <= _check_int("kind", kind) <= 1:
        raise StreamcoreValueError(f"unknown frame kind {kind}: expected 0 (events), 1 (control)")
    if isinstance(payloads, (bytes, bytearray, memoryview, str)):
        raise StreamcoreTypeError(
            f"payloads must be a sequence of bytes, not a single {type(payloads).__name__}"
        )
    try:
        items = list(payloads)  # type: ignore[call-overload]
    except TypeError:
        raise StreamcoreTypeError(
            f"payloads must be a sequence of bytes, not {type(payloads).__name__}"
        ) from None
    if not items:
        raise StreamcoreValueError("empty window: a frame needs at least one payload")
    if len(items) > MAX_COUNT:
        raise StreamcoreValueError(f"too many payloads for one frame: {len(items)}")
    for i, payload in enumerate(items):
        if not isinstance(payload, bytes):
            raise StreamcoreTypeError(f"payload {i} is {type(payload).__name__}, expected bytes")
        if not payload:
            raise StreamcoreValueError(f"payload {i} is empty: each payload must be a JSON value")
    body = b"[" + b",".join(items) + b"]"
    if len(body) > MAX_RAW_LENGTH:
        raise StreamcoreValueError(f"frame body of {len(body)} bytes does not fit 32 bits")
    return body, len(items)


class ReferenceFrameEncoder:
    """Plain-Python twin of streamcore.FrameEncoder, counters included."""

    def __init__(self, threshold: int = 1024, zstd_level: int = 1, gzip_level: int = 6) -> None:
        check_settings(threshold, zstd_level, gzip_level)
        self.threshold = threshold
        self.zstd_level = zstd_level
        self.gzip_level = gzip_level
        self._zstd = zstandard.ZstdCompressor(level=zstd_level)
        self.frames = 0
        self.compressed_frames = 0
        self.raw_bytes = 0
        self.wire_bytes = 0

    @property
    def bytes_saved(self) -> int:
        return self.raw_bytes - self.wire_bytes

    def _pack(self, body: bytes, codec: Codec) -> tuple[bytes, Codec]:
        """Return the wire body and the codec actually applied."""
        if codec is Codec.NONE or len(body) <= self.threshold:
            return body, Codec.NONE
        if codec is Codec.ZSTD:
            packed = self._zstd.compress(body)
        else:
            packed = zlib.compress(body, self.gzip_level, 31)  # 31 = gzip wrapper
        # Compression that does not shrink the body only costs the client time.
        return (packed, codec) if len(packed) < len(body) else (body, Codec.NONE)

    def _emit(
        self,
        seq: int,
        first_seq: int,
        count: int,
        kind: int,
        body: bytes,
        wire_body: bytes,
        applied: Codec,
    ) -> bytes:
        header = HEADER.pack(MAGIC, VERSION, applied, kind, 0, 0, seq, first_seq, count, len(body))
        self.frames += 1
        self.compressed_frames += applied is not Codec.NONE
        self.raw_bytes += len(header) + len(body)
        self.wire_bytes += len(header) + len(wire_body)
        return header + wire_body

    def encode(
        self,
        seq: int,
        payloads: Sequence[bytes],
        codec: Codec | int = Codec.ZSTD,
        kind: int = 0,
        first_seq: int | None = None,
    ) -> bytes:
        codec = check_codec(codec)
        body, count = build_body(seq, payloads, kind, first_seq)
        first = seq if first_seq is None else first_seq
        wire_body, applied = self._pack(body, codec)
        return self._emit(seq, first, count, kind, body, wire_body, applied)

    def encode_many(
        self,
        seq: int,
        payloads: Sequence[bytes],
        codecs: Iterable[Codec | int],
        kind: int = 0,
        first_seq: int | None = None,
    ) -> dict[Codec, bytes]:
        if isinstance(codecs, (str, bytes)):
            raise StreamcoreTypeError("codecs must be an iterable of Codec, not a single str")
        wanted = [check_codec(c) for c in codecs]
        body, count = build_body(seq, payloads, kind, first_seq)
        first = seq if first_seq is None else first_seq
        out: dict[Codec, bytes] = {}
        raw: bytes | None = None  # one uncompressed frame, shared by every codec that ends up raw
        for codec in wanted:
            if codec in out:
                continue
            wire_body, applied = self._pack(body, codec)
            if applied is Codec.NONE:
                if raw is None:
                    raw = self._emit(seq, first, count, kind, body, body, Codec.NONE)
                out[codec] = raw
            else:
                out[codec] = self._emit(seq, first, count, kind, body, wire_body, applied)
        return out


def reference_encode(
    seq: int,
    payloads: Sequence[bytes],
    codec: Codec | int = Codec.ZSTD,
    kind: int = FrameKind.EVENTS,
    *,
    threshold: int = 1024,
    zstd_level: int = 1,
    gzip_level: int = 6,
) -> bytes:
    """Encode one frame in plain Python (struct + join + zstandard / zlib)."""
    return ReferenceFrameEncoder(threshold, zstd_level, gzip_level).encode(
        seq, payloads, codec, kind
    )


__all__ = [
    "ReferenceFrameEncoder",
    "build_body",
    "check_codec",
    "check_settings",
    "reference_encode",
]
