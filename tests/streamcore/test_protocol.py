"""decode_frame: every corruption is a CorruptDataError naming the problem, never anything else."""

from __future__ import annotations

import ast
import contextlib
import json
import struct
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore.protocol as protocol
from streamcore import Codec, CorruptDataError, FrameEncoder, decode_frame
from streamcore.errors import StreamcoreTypeError
from streamcore.protocol import HEADER, HEADER_SIZE, FrameKind, decode_frame_raw

PAYLOADS = [
    json.dumps({"id": i, "symbol": "ACME", "price": 10 + i / 4}).encode() for i in range(60)
]
BODY = b"[" + b",".join(PAYLOADS) + b"]"


def frame(
    body: bytes = BODY,
    *,
    magic: bytes = b"SC",
    version: int = 2,
    codec: int = 0,
    kind: int = 0,
    flags: int = 0,
    reserved: int = 0,
    seq: int = 7,
    first_seq: int = 5,
    count: int = len(PAYLOADS),
    raw_length: int | None = None,
    wire_body: bytes | None = None,
) -> bytes:
    """A hand-built frame, so each test can break exactly one field."""
    raw_length = len(body) if raw_length is None else raw_length
    header = HEADER.pack(
        magic, version, codec, kind, flags, reserved, seq, first_seq, count, raw_length
    )
    return header + (body if wire_body is None else wire_body)


def test_hand_built_frames_decode() -> None:
    for codec, wire in [
        (Codec.NONE, BODY),
        (Codec.ZSTD, zstandard.ZstdCompressor().compress(BODY)),
        (Codec.GZIP, zlib.compress(BODY, 6, 31)),
    ]:
        decoded = decode_frame(frame(codec=codec, wire_body=wire))
        assert decoded.events == json.loads(BODY)
        assert (decoded.seq, decoded.codec, decoded.kind) == (7, codec, FrameKind.EVENTS)
        assert decoded.raw_length == len(BODY)
        assert decoded.wire_length == HEADER_SIZE + len(wire)


def test_accepts_bytearray_and_memoryview() -> None:
    data = FrameEncoder().encode(3, PAYLOADS)
    assert decode_frame(bytearray(data)) == decode_frame(data) == decode_frame(memoryview(data))


def test_rejects_non_bytes() -> None:
    with pytest.raises(StreamcoreTypeError, match="frame must be bytes"):
        decode_frame("SC")  # type: ignore[arg-type]


def test_empty_array_frame_is_valid() -> None:
    # The encoder never builds one (it refuses empty windows), but the format allows it.
    assert decode_frame(frame(b"[]", count=0)).events == []


GZIP = zlib.compress(BODY, 6, 31)
ZSTD = zstandard.ZstdCompressor().compress(BODY)
ZSTD_NO_SIZE = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
BOMB = b"[" + b"0," * 2_000_000 + b"0]"  # 4 MB of JSON that packs to a few KB


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated header"),
        (frame()[: HEADER_SIZE - 1], "truncated header"),
        (frame(magic=b"XC"), "bad magic"),
        (frame(version=1), "unsupported frame version 1"),
        (frame(version=3), "unsupported frame version 3"),
        (frame(seq=4, first_seq=5), "first_seq 5 is beyond seq 4"),
        (frame(version=0), "unsupported frame version 0"),
        (frame(codec=3), "unknown codec 3"),
        (frame(kind=2), "unknown frame kind 2"),
        (frame(flags=1), "reserved flags"),
        (frame(flags=0x80), "reserved flags"),
        (frame(reserved=1), "reserved header bytes"),
        (frame(raw_length=len(BODY) + 1), "body length mismatch"),
        (frame(raw_length=len(BODY) - 1), "body length mismatch"),
        (frame()[:-1], "body length mismatch"),
        (frame(codec=2, wire_body=GZIP, raw_length=len(BODY) + 1), "decompressed length mismatch"),
        (frame(codec=2, wire_body=GZIP, raw_length=len(BODY) - 1), "decompressed length mismatch"),
        (frame(codec=1, wire_body=ZSTD, raw_length=len(BODY) + 1), "decompressed length mismatch"),
        (frame(codec=1, wire_body=ZSTD, raw_length=len(BODY) - 1), "decompressed length mismatch"),
        (frame(codec=1, wire_body=ZSTD_NO_SIZE, raw_length=len(BODY) - 1), "bad zstd body"),
        (frame(codec=1, wire_body=ZSTD_NO_SIZE, raw_length=len(BODY) + 1), "decompressed length"),
        (frame(codec=2, wire_body=GZIP[:-6]), "truncated gzip body"),
        (frame(codec=2, wire_body=GZIP + b"junk"), "trailing data"),
        (frame(codec=2, wire_body=BODY), "bad gzip body"),
        (frame(codec=1, wire_body=ZSTD[:-4]), "bad zstd body"),
        (frame(codec=1, wire_body=ZSTD + b"junk"), "bad zstd body"),
        (frame(codec=1, wire_body=BODY), "bad zstd body"),
        (frame(b"", codec=1, wire_body=zstandard.ZstdCompressor().compress(b"")), "empty raw body"),
        (frame(raw_length=2**32 - 1), "oversize frame"),
        (frame(b'{"a": 1}', count=1), "not an array"),
        (frame(b'"x"', count=1), "not an array"),
        (frame(b"[1,2", count=2), "not valid JSON"),
        (frame(b"[1,\xff]", count=2), "not valid JSON"),
        (frame(b"[" * 100_000, count=1), "not valid JSON"),
        (frame(count=len(PAYLOADS) + 1), "event count mismatch"),
        (frame(count=0), "event count mismatch"),
    ],
)
def test_rejects_corruption(data: bytes, match: str) -> None:
    with pytest.raises(CorruptDataError, match=match):
        decode_frame(data)


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.GZIP])
def test_zip_bomb_is_refused_before_inflating(codec: Codec) -> None:
    packed = (
        zstandard.ZstdCompressor(write_content_size=False).compress(BOMB)
        if codec is Codec.ZSTD
        else zlib.compress(BOMB, 9, 31)
    )
    assert len(packed) < 20_000
    # Honest header but over the decoder's limit: refused from the header alone.
    with pytest.raises(CorruptDataError, match="oversize frame"):
        decode_frame(frame(BOMB, codec=codec, wire_body=packed), max_raw_length=1_000_000)
    # Lying header (claims 100 bytes): inflation stops at the claim, it never holds 4 MB.
    with pytest.raises(CorruptDataError, match=r"decompressed length|bad zstd body"):
        decode_frame(frame(BOMB, codec=codec, wire_body=packed, raw_length=100))
    # Within the limit it decodes.
    assert len(
        decode_frame(frame(BOMB, codec=codec, wire_body=packed, count=2_000_001)).events
    ) == (2_000_001)


def test_decode_frame_raw_validates_without_parsing_json() -> None:
    header, body = decode_frame_raw(frame(b"not json", count=3))
    assert body == b"not json"
    assert header.count == 3


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_binary_only_raises_corrupt_data(data: bytes) -> None:
    with contextlib.suppress(CorruptDataError):
        decode_frame(data)


valid_prefix = st.sampled_from(
    [
        frame(),
        frame(codec=1, wire_body=ZSTD),
        frame(codec=2, wire_body=GZIP),
        frame(codec=1, wire_body=ZSTD_NO_SIZE),
    ]
)


@settings(max_examples=400, deadline=None)
@given(valid_prefix, st.integers(0, 400), st.binary(min_size=1, max_size=8), st.booleans())
def test_fuzz_mutated_frames_only_raise_corrupt_data(
    data: bytes, position: int, patch: bytes, truncate: bool
) -> None:
    # Mutations of real frames reach deeper than random bytes: past the header, into the codecs.
    position %= len(data)
    mutated = (
        data[:position] if truncate else data[:position] + patch + data[position + len(patch) :]
    )
    try:
        decoded = decode_frame(mutated)
    except CorruptDataError:
        return
    assert isinstance(decoded.events, list)
    assert len(decoded.events) == struct.unpack_from(">I", mutated, 24)[0]


def test_protocol_imports_nothing_compiled() -> None:
    # Clients vendor protocol.py (with errors.py): it must stay pure Python.
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {
        "__future__",
        "json",
        "struct",
        "zlib",
        "dataclasses",
        "enum",
        "typing",
        "errors",
        "zstandard",
    }, imported
