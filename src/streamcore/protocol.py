"""The streamcore wire protocol: frame header, codecs and a validating decoder.

Pure Python on purpose (no compiled imports), so a client can vendor this file together with
errors.py. docs/PROTOCOL.md is the specification; this module is its executable form.

Frame = 32-byte header (network byte order) + body:

    offset  size  field
    0       2     magic b"SC"
    2       1     version (2)
    3       1     codec actually applied to the body (0 none, 1 zstd, 2 gzip)
    4       1     kind (0 events, 1 control)
    5       1     flags (reserved, 0)
    6       2     reserved (0; pads seq to an 8-byte offset)
    8       8     seq: the newest position of the org's event sequence the frame covers
    16      8     first_seq: the oldest position it covers (an events frame covers first_seq..seq)
    24      4     event count
    28      4     raw (decompressed) body length
    32      ...   body: b"[" + b",".join(payloads) + b"]", possibly compressed
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .errors import CorruptDataError, StreamcoreTypeError, StreamcoreValueError

try:
    import zstandard
except ImportError:  # pragma: no cover - a vendored decoder may live without zstd
    zstandard = None  # type: ignore[assignment]

MAGIC = b"SC"
VERSION = 2
HEADER = struct.Struct(">2sBBBBHQQII")
HEADER_SIZE = HEADER.size  # 32
MAX_SEQ = (1 << 64) - 1
MAX_COUNT = (1 << 32) - 1
MAX_RAW_LENGTH = (1 << 32) - 1
# A decoder refuses to inflate more than this by default: the header's claim is checked
# before any allocation, so a zip bomb costs nothing.
DEFAULT_MAX_RAW_LENGTH = 64 * 1024 * 1024


class Codec(IntEnum):
    """Compression applied to a frame body."""

    NONE = 0
    ZSTD = 1
    GZIP = 2

    @classmethod
    def parse(cls, name: str) -> Codec:
        """Return the codec named "none", "zstd" or "gzip" (case-insensitive)."""
        if not isinstance(name, str):
            raise StreamcoreTypeError(f"codec name must be a str, not {type(name).__name__}")
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise StreamcoreValueError(
                f"unknown codec {name!r}: expected one of 'none', 'zstd', 'gzip'"
            ) from None


class FrameKind(IntEnum):
    """What a frame's body holds."""

    EVENTS = 0
    CONTROL = 1


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The validated fixed header of a frame."""

    seq: int
    codec: Codec
    kind: FrameKind
    count: int
    raw_length: int
    wire_length: int
    first_seq: int = 0


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A fully decoded frame: header fields and the parsed events."""

    seq: int
    codec: Codec
    kind: FrameKind
    events: list[Any]
    raw_length: int
    wire_length: int
    first_seq: int = 0


def _as_bytes(data: object) -> bytes | memoryview:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return memoryview(data).cast("B")
    raise StreamcoreTypeError(f"frame must be bytes, not {type(data).__name__}")


def decode_header(data: bytes) -> FrameHeader:
    """Parse and validate the fixed header of a frame (the body is not inflated)."""
    buf = _as_bytes(data)
    if len(buf) < HEADER_SIZE:
        raise CorruptDataError(
            f"truncated header: frame has {len(buf)} bytes, the header needs {HEADER_SIZE}"
        )
    magic, version, codec, kind, flags, reserved, seq, first_seq, count, raw_length = (
        HEADER.unpack_from(buf)
    )
    if magic != MAGIC:
        raise CorruptDataError(f"bad magic {bytes(magic)!r}: expected {MAGIC!r}")
    if version != VERSION:
        raise CorruptDataError(f"unsupported frame version {version}: this decoder reads {VERSION}")
    if codec > Codec.GZIP:
        raise CorruptDataError(f"unknown codec {codec} in frame header")
    if kind > FrameKind.CONTROL:
        raise CorruptDataError(f"unknown frame kind {kind} in frame header")
    if flags:
        raise CorruptDataError(f"reserved flags set (0x{flags:02x}): must be 0")
    if reserved:
        raise CorruptDataError(f"reserved header bytes set (0x{reserved:04x}): must be 0")
    if first_seq > seq:
        raise CorruptDataError(f"first_seq {first_seq} is beyond seq {seq}")
    return FrameHeader(seq, Codec(codec), FrameKind(kind), count, raw_length, len(buf), first_seq)


def decode_frame_raw(
    data: bytes, *, max_raw_length: int = DEFAULT_MAX_RAW_LENGTH
) -> tuple[FrameHeader, bytes]:
    """Validate a frame and return its header and decompressed body (JSON not parsed)."""
    header = decode_header(data)
    raw_length = header.raw_length
    if raw_length > max_raw_length:
        raise CorruptDataError(
            f"oversize frame: header claims a {raw_length}-byte body, the limit is {max_raw_length}"
        )
    body = _as_bytes(data)[HEADER_SIZE:]
    if header.codec is Codec.NONE:
        if len(body) != raw_length:
            raise CorruptDataError(
                f"body length mismatch: header says {raw_length} bytes, frame carries {len(body)}"
            )
        raw = bytes(body)
    elif header.codec is Codec.ZSTD:
        raw = _inflate_zstd(bytes(body), raw_length)
    else:
        raw = _inflate_gzip(body, raw_length)
    if len(raw) != raw_length:
        raise CorruptDataError(
            f"decompressed length mismatch: header says {raw_length} bytes, body inflates to "
            f"{len(raw)}"
        )
    return header, raw


def _inflate_zstd(body: bytes, raw_length: int) -> bytes:
    if zstandard is None:  # pragma: no cover
        raise StreamcoreValueError("zstd frame received but the zstandard package is missing")
    try:
        declared = zstandard.frame_content_size(body)
        # Check the frame's own size claim before decompress() allocates it.
        if declared != -1 and declared != raw_length:
            raise CorruptDataError(
                f"decompressed length mismatch: header says {raw_length} bytes, the zstd frame "
                f"declares {declared}"
            )
        if raw_length == 0:
            raise CorruptDataError("zstd frame with an empty raw body")
        return zstandard.ZstdDecompressor().decompress(
            body, max_output_size=raw_length, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CorruptDataError(f"bad zstd body: {exc}") from None


def _inflate_gzip(body: bytes | memoryview, raw_length: int) -> bytes:
    inflater = zlib.decompressobj(31)  # 31 = gzip wrapper
    try:
        # max_length caps memory: one byte more than claimed is enough to detect a lie.
        raw = inflater.decompress(body, raw_length + 1)
    except zlib.error as exc:
        raise CorruptDataError(f"bad gzip body: {exc}") from None
    if len(raw) > raw_length:
        raise CorruptDataError(
            f"decompressed length mismatch: header says {raw_length} bytes, body inflates to more"
        )
    if not inflater.eof:
        raise CorruptDataError("truncated gzip body: the stream does not end")
    if inflater.unused_data:
        raise CorruptDataError(
            f"{len(inflater.unused_data)} bytes of trailing data after the gzip stream"
        )
    return raw


def decode_frame(data: bytes, *, max_raw_length: int = DEFAULT_MAX_RAW_LENGTH) -> DecodedFrame:
    """Validate and decode a frame; raise CorruptDataError naming the first problem found."""
    header, raw = decode_frame_raw(data, max_raw_length=max_raw_length)
    try:
        events = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptDataError(f"body is not valid JSON: {exc}") from None
    if not isinstance(events, list):
        raise CorruptDataError(f"body is a JSON {type(events).__name__}, not an array")
    if len(events) != header.count:
        raise CorruptDataError(
            f"event count mismatch: header says {header.count}, body holds {len(events)}"
        )
    return DecodedFrame(
        header.seq,
        header.codec,
        header.kind,
        events,
        header.raw_length,
        header.wire_length,
        header.first_seq,
    )


__all__ = [
    "DEFAULT_MAX_RAW_LENGTH",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "Codec",
    "DecodedFrame",
    "FrameHeader",
    "FrameKind",
    "decode_frame",
    "decode_frame_raw",
    "decode_header",
]
