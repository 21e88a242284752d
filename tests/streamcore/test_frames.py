"""FrameEncoder: byte-identical to the reference, decodable, threshold, codec sharing, errors."""

from __future__ import annotations

import importlib.machinery
import json
import struct
import threading
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore
import streamcore._frames as compiled_frames
from streamcore import Codec, FrameEncoder, decode_frame
from streamcore.errors import StreamcoreError, StreamcoreTypeError, StreamcoreValueError
from streamcore.protocol import HEADER_SIZE, FrameKind, decode_frame_raw, decode_header
from streamcore.reference.frames import ReferenceFrameEncoder, reference_encode

IMPLEMENTATIONS = [FrameEncoder, ReferenceFrameEncoder]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
windows = st.lists(json_values, min_size=1, max_size=60)
codecs = st.sampled_from(list(Codec))
seqs = st.integers(0, 2**64 - 1)


def encoded(values: list[object]) -> list[bytes]:
    return [json.dumps(v, separators=(",", ":")).encode() for v in values]


def finance_window(n: int, seed: int = 0) -> list[bytes]:
    return [
        json.dumps(
            {
                "type": "trade",
                "id": seed * 1000 + i,
                "symbol": f"SYM{i % 17}",
                "price": 100 + i / 8,
                "qty": i * 3 % 250,
                "ts": 1_700_000_000_000 + i,
            }
        ).encode()
        for i in range(n)
    ]


def test_compiled_module_is_an_extension() -> None:
    assert compiled_frames.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert streamcore.FrameEncoder is compiled_frames.FrameEncoder


def test_codec_is_reexported_from_protocol() -> None:
    assert compiled_frames.Codec is streamcore.protocol.Codec is streamcore.Codec


# --- byte-identical to the reference and decodable -----------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    values=windows,
    seq=seqs,
    codec=codecs,
    kind=st.sampled_from([0, 1]),
    threshold=st.sampled_from([0, 16, 200, 1024]),
    zstd_level=st.sampled_from([1, 3, 19]),
    gzip_level=st.sampled_from([1, 6, 9]),
)
def test_encode_matches_reference_and_decodes(
    values: list[object],
    seq: int,
    codec: Codec,
    kind: int,
    threshold: int,
    zstd_level: int,
    gzip_level: int,
) -> None:
    payloads = encoded(values)
    encoder = FrameEncoder(threshold, zstd_level, gzip_level)
    frame = encoder.encode(seq, payloads, codec, kind)
    assert frame == reference_encode(
        seq,
        payloads,
        codec,
        kind,
        threshold=threshold,
        zstd_level=zstd_level,
        gzip_level=gzip_level,
    )
    decoded = decode_frame(frame)
    assert decoded.events == json.loads(b"[" + b",".join(payloads) + b"]")
    assert decoded.seq == seq
    assert decoded.kind == kind
    assert decoded.wire_length == len(frame)
    assert decoded.raw_length == len(b",".join(payloads)) + 2
    assert decoded.codec in (Codec.NONE, codec)


@settings(max_examples=60, deadline=None)
@given(
    values=windows,
    seq=seqs,
    wanted=st.lists(codecs, max_size=5),
    threshold=st.sampled_from([0, 300]),
)
def test_encode_many_and_counters_match_reference(
    values: list[object], seq: int, wanted: list[Codec], threshold: int
) -> None:
    payloads = encoded(values)
    ours, theirs = FrameEncoder(threshold), ReferenceFrameEncoder(threshold)
    got = ours.encode_many(seq, payloads, wanted)
    assert got == theirs.encode_many(seq, payloads, wanted)
    assert set(got) == set(wanted)
    for codec, frame in got.items():
        assert frame == ours.encode(seq, payloads, codec) == theirs.encode(seq, payloads, codec)
    for name in ("frames", "compressed_frames", "raw_bytes", "wire_bytes", "bytes_saved"):
        assert getattr(ours, name) == getattr(theirs, name), name


# --- threshold -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.GZIP])
def test_body_at_or_below_threshold_goes_raw(impl: type, codec: Codec) -> None:
    payloads = finance_window(4)
    body = b"[" + b",".join(payloads) + b"]"
    encoder = impl(threshold=len(body))
    frame = encoder.encode(3, payloads, codec)
    assert frame[3] == Codec.NONE
    assert frame[HEADER_SIZE:] == body
    assert encoder.compressed_frames == 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.GZIP])
def test_body_above_threshold_is_compressed(impl: type, codec: Codec) -> None:
    payloads = finance_window(40)
    body = b"[" + b",".join(payloads) + b"]"
    encoder = impl(threshold=len(body) - 1)
    frame = encoder.encode(3, payloads, codec)
    assert frame[3] == codec
    inflate = (
        zstandard.ZstdDecompressor().decompress
        if codec is Codec.ZSTD
        else lambda b: zlib.decompress(b, 31)
    )
    assert inflate(frame[HEADER_SIZE:]) == body
    assert len(frame) < len(body)
    assert encoder.compressed_frames == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_none_codec_never_compresses(impl: type) -> None:
    payloads = finance_window(40)
    frame = impl(threshold=0).encode(1, payloads, Codec.NONE)
    assert frame[3] == Codec.NONE
    assert frame[HEADER_SIZE:] == b"[" + b",".join(payloads) + b"]"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_incompressible_body_goes_raw(impl: type) -> None:
    # A short random string does not shrink: compressing it would only cost the client time.
    payloads = [b'"q8Zr2mXk0vL9tW4yB7nC"']
    encoder = impl(threshold=0)
    frame = encoder.encode(1, payloads, Codec.ZSTD)
    assert frame[3] == Codec.NONE
    assert encoder.compressed_frames == 0
    assert encoder.bytes_saved == 0
    assert decode_frame(frame).events == [json.loads(payloads[0])]


def test_header_layout_is_network_byte_order() -> None:
    frame = FrameEncoder().encode(
        0x0102030405060708, [b"1", b"22"], Codec.ZSTD, kind=1, first_seq=0x0102030405060701
    )
    assert frame[:HEADER_SIZE] == b"SC" + bytes([2, 0, 1, 0, 0, 0]) + bytes(range(1, 9)) + bytes(
        [1, 2, 3, 4, 5, 6, 7, 1]
    ) + struct.pack(">II", 2, 6)
    assert frame[HEADER_SIZE:] == b"[1,22]"
    header = decode_header(frame)
    assert (header.seq, header.first_seq, header.kind, header.count, header.raw_length) == (
        0x0102030405060708,
        0x0102030405060701,
        1,
        2,
        6,
    )


def test_first_seq_defaults_to_seq_and_may_not_pass_it() -> None:
    encoder = FrameEncoder()
    assert decode_header(encoder.encode(9, [b"1"])).first_seq == 9
    assert (
        decode_header(
            encoder.encode_many(9, [b"1"], [Codec.NONE], first_seq=3)[Codec.NONE]
        ).first_seq
        == 3
    )
    with pytest.raises(StreamcoreValueError, match=r"first_seq must be in 0\.\.seq"):
        encoder.encode(9, [b"1"], first_seq=10)


def test_control_frame_round_trips() -> None:
    reset = b'{"type":"reset","channel":"prices","seq":41,"oldest":100}'
    frame = FrameEncoder().encode(41, [reset], kind=FrameKind.CONTROL)
    decoded = decode_frame(frame)
    assert decoded.kind is FrameKind.CONTROL
    assert decoded.events == [json.loads(reset)]


def test_seq_extremes_round_trip() -> None:
    encoder = FrameEncoder()
    for seq in (0, 1, 2**32, 2**64 - 1):
        assert decode_frame(encoder.encode(seq, [b"0"])).seq == seq


def test_payloads_may_be_tuple_or_iterable() -> None:
    encoder = FrameEncoder(threshold=0)
    expected = encoder.encode(5, [b"1", b"2"])
    assert encoder.encode(5, (b"1", b"2")) == expected
    assert encoder.encode(5, iter([b"1", b"2"])) == expected


def test_large_window_grows_the_scratch_buffer() -> None:
    payloads = finance_window(2000)  # ~200 KB body, past the initial 16 KB scratch
    encoder = FrameEncoder()
    for codec in Codec:
        assert decode_frame(encoder.encode(9, payloads, codec)).events == [
            json.loads(p) for p in payloads
        ]
    assert encoder.encode(9, payloads) == reference_encode(9, payloads)


def test_decode_frame_raw_returns_the_body() -> None:
    payloads = finance_window(30)
    header, body = decode_frame_raw(FrameEncoder().encode(2, payloads, Codec.GZIP))
    assert body == b"[" + b",".join(payloads) + b"]"
    assert header.codec is Codec.GZIP
    assert header.count == 30


# --- encode_many: one compression per distinct codec ------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_many_compresses_once_per_codec(impl: type) -> None:
    payloads = finance_window(100)
    encoder = impl()
    frames = encoder.encode_many(1, payloads, [Codec.ZSTD, Codec.GZIP, Codec.ZSTD, Codec.GZIP])
    assert set(frames) == {Codec.ZSTD, Codec.GZIP}
    assert encoder.frames == 2
    assert encoder.compressed_frames == 2
    assert frames[Codec.ZSTD][3] == Codec.ZSTD
    assert frames[Codec.GZIP][3] == Codec.GZIP
    body_frame = HEADER_SIZE + len(b",".join(payloads)) + 2
    assert encoder.raw_bytes == 2 * body_frame
    assert encoder.wire_bytes == len(frames[Codec.ZSTD]) + len(frames[Codec.GZIP])
    assert encoder.bytes_saved == encoder.raw_bytes - encoder.wire_bytes > 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_many_below_threshold_shares_one_raw_frame(impl: type) -> None:
    encoder = impl()
    frames = encoder.encode_many(1, [b"1", b"2"], [Codec.ZSTD, Codec.GZIP, Codec.NONE])
    assert frames[Codec.ZSTD] is frames[Codec.GZIP] is frames[Codec.NONE]
    assert encoder.frames == 1
    assert encoder.compressed_frames == 0
    assert encoder.bytes_saved == 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_many_with_no_codecs_builds_nothing(impl: type) -> None:
    encoder = impl()
    assert encoder.encode_many(1, [b"1"], []) == {}
    assert encoder.frames == 0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_counters_accumulate(impl: type) -> None:
    encoder = impl(threshold=100)
    small, big = [b"1"], finance_window(50)
    f1 = encoder.encode(1, small)
    f2 = encoder.encode(2, big, Codec.GZIP)
    f3 = encoder.encode(3, big, Codec.NONE)
    assert encoder.frames == 3
    assert encoder.compressed_frames == 1
    raw_big = HEADER_SIZE + len(b",".join(big)) + 2
    assert encoder.raw_bytes == len(f1) + raw_big + len(f3)
    assert encoder.wire_bytes == len(f1) + len(f2) + len(f3)
    assert encoder.bytes_saved == raw_big - len(f2)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": -1}, StreamcoreValueError, "threshold"),
        ({"threshold": 2**32}, StreamcoreValueError, "threshold"),
        ({"threshold": 1.5}, StreamcoreTypeError, "threshold"),
        ({"zstd_level": 0}, StreamcoreValueError, "zstd_level"),
        ({"zstd_level": 23}, StreamcoreValueError, "zstd_level"),
        ({"zstd_level": "1"}, StreamcoreTypeError, "zstd_level"),
        ({"gzip_level": 0}, StreamcoreValueError, "gzip_level"),
        ({"gzip_level": 10}, StreamcoreValueError, "gzip_level"),
        ({"gzip_level": True}, StreamcoreTypeError, "gzip_level"),
    ],
)
def test_bad_settings(impl: type, kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        impl(**kwargs)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1, [b"1"]), StreamcoreValueError, "seq must fit"),
        ((2**64, [b"1"]), StreamcoreValueError, "seq must fit"),
        ((1.0, [b"1"]), StreamcoreTypeError, "seq must be an int"),
        ((None, [b"1"]), StreamcoreTypeError, "seq must be an int"),
        ((1, []), StreamcoreValueError, "empty window"),
        ((1, b"[1]"), StreamcoreTypeError, "single bytes"),
        ((1, "x"), StreamcoreTypeError, "single str"),
        ((1, 5), StreamcoreTypeError, "sequence of bytes"),
        ((1, [b"1", "2"]), StreamcoreTypeError, "payload 1 is str"),
        ((1, [b"1", bytearray(b"2")]), StreamcoreTypeError, "payload 1 is bytearray"),
        ((1, [b"1", b""]), StreamcoreValueError, "payload 1 is empty"),
        ((1, [b"1"], 3), StreamcoreValueError, "unknown codec 3"),
        ((1, [b"1"], -1), StreamcoreValueError, "unknown codec -1"),
        ((1, [b"1"], "zstd"), StreamcoreTypeError, "codec must be an int"),
        ((1, [b"1"], Codec.ZSTD, 2), StreamcoreValueError, "unknown frame kind 2"),
        ((1, [b"1"], Codec.ZSTD, None), StreamcoreTypeError, "kind must be an int"),
    ],
)
def test_bad_encode_arguments(impl: type, args: tuple, error: type, match: str) -> None:
    encoder = impl(threshold=0)
    with pytest.raises(error, match=match):
        encoder.encode(*args)
    with pytest.raises(error, match=match):
        encoder.encode_many(args[0], args[1], [args[2] if len(args) > 2 else Codec.ZSTD], *args[3:])
    assert encoder.frames == 0
    # The encoder is still usable after a refused call.
    assert decode_frame(encoder.encode(1, [b"1"])).events == [1]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_encode_many_rejects_a_single_codec_name(impl: type) -> None:
    with pytest.raises(StreamcoreTypeError, match="iterable of Codec"):
        impl().encode_many(1, [b"1"], "zstd")


def test_codec_parse() -> None:
    assert Codec.parse("zstd") is Codec.ZSTD
    assert Codec.parse("GZIP") is Codec.GZIP
    assert Codec.parse("none") is Codec.NONE
    with pytest.raises(StreamcoreValueError, match="unknown codec 'brotli'"):
        Codec.parse("brotli")
    with pytest.raises(StreamcoreTypeError, match="must be a str"):
        Codec.parse(1)  # type: ignore[arg-type]


def test_concurrent_use_is_refused_or_correct_never_corrupt() -> None:
    # zstd releases the GIL while it compresses: a second thread must not reuse the scratch body.
    encoder = FrameEncoder(threshold=0, zstd_level=9)
    windows = [finance_window(3000, seed) for seed in range(2)]
    results: list[tuple[int, bytes]] = []
    refused: list[StreamcoreError] = []

    def work(which: int) -> None:
        for _ in range(6):
            try:
                results.append((which, encoder.encode(which, windows[which])))
            except StreamcoreError as exc:
                refused.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) + len(refused) == 12
    assert all("already encoding" in str(exc) for exc in refused)
    for which, frame in results:
        assert decode_frame(frame).events == [json.loads(p) for p in windows[which]]
