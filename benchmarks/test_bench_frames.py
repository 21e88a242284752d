"""Frames: the compiled encoder against zstd alone and the reference, and zstd against gzip."""

import json
import random

import pytest
import zstandard

from streamcore import Codec, FrameEncoder, decode_frame
from streamcore.reference.frames import ReferenceFrameEncoder

EVENTS = 100
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "V", "XOM", "BRK.B"]


def _window(n=EVENTS, seed=1):
    """Finance events of ~100-200 bytes each, with varied values so zstd has real work to do."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["trade", "quote", "order"])
        event = {
            "type": kind,
            "id": f"evt_{rng.getrandbits(48):012x}",
            "seq": 1_000_000 + i,
            "symbol": rng.choice(SYMBOLS),
            "price": round(rng.uniform(10, 900), 4),
            "qty": rng.randint(1, 5_000),
            "ts": 1_764_000_000_000 + i * 7 + rng.randint(0, 6),
        }
        if kind == "quote":
            event["bid"] = round(event["price"] - rng.uniform(0, 0.2), 4)
            event["ask"] = round(event["price"] + rng.uniform(0, 0.2), 4)
        if kind == "order":
            event["side"] = rng.choice(["buy", "sell"])
            event["account"] = f"acct_{rng.randint(1, 999):04d}"
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


PAYLOADS = _window()
BODY = b"[" + b",".join(PAYLOADS) + b"]"
assert all(60 <= len(p) <= 220 for p in PAYLOADS), [len(p) for p in PAYLOADS]


# -- one 100-event window, zstd level 1 ----------------------------------------------------------


@pytest.mark.benchmark(group="frames-100-events")
def test_frame_zstd_alone(benchmark):
    compress = zstandard.ZstdCompressor(level=1).compress
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = EVENTS
    packed = benchmark(compress, BODY)
    assert zstandard.ZstdDecompressor().decompress(packed) == BODY


@pytest.mark.benchmark(group="frames-100-events")
def test_frame_compiled(benchmark):
    encoder = FrameEncoder(zstd_level=1)
    benchmark.extra_info["items"] = EVENTS
    benchmark.extra_info["target_speedup"] = 0.8
    benchmark.extra_info["target"] = (
        "FrameEncoder.encode of a 100-event window costs at most 25% more than zstd alone"
    )
    frame = benchmark(encoder.encode, 1, PAYLOADS, Codec.ZSTD)
    assert decode_frame(frame).codec is Codec.ZSTD
    assert decode_frame(frame).events == [json.loads(p) for p in PAYLOADS]


@pytest.mark.benchmark(group="frames-100-events")
def test_frame_reference(benchmark):
    encoder = ReferenceFrameEncoder(zstd_level=1)
    benchmark.extra_info["items"] = EVENTS
    frame = benchmark(encoder.encode, 1, PAYLOADS, Codec.ZSTD)
    assert frame == FrameEncoder().encode(1, PAYLOADS, Codec.ZSTD)


# -- zstd level 1 against gzip level 6 on the same frames ----------------------------------------


def _codec_run(benchmark, codec, encoder):
    frame = benchmark(encoder.encode, 1, PAYLOADS, codec)
    assert frame[3] == codec
    assert decode_frame(frame).events == [json.loads(p) for p in PAYLOADS]
    benchmark.extra_info["items"] = EVENTS
    benchmark.extra_info["raw_bytes"] = len(BODY)
    benchmark.extra_info["wire_bytes"] = len(frame)
    # "compression_ratio", not "ratio": the report's ratio column is baseline time / subject time.
    benchmark.extra_info["compression_ratio"] = round(len(BODY) / len(frame), 3)
    if benchmark.stats:  # None when benchmarks are disabled
        median = benchmark.stats.stats.median  # the report compares medians too
        benchmark.extra_info["mb_per_s"] = round(len(BODY) / median / 1e6, 1)


@pytest.mark.benchmark(group="frames-zstd-vs-gzip")
def test_codec_gzip_level6(benchmark):
    benchmark.extra_info["baseline"] = True
    _codec_run(benchmark, Codec.GZIP, FrameEncoder(gzip_level=6))


@pytest.mark.benchmark(group="frames-zstd-vs-gzip")
def test_codec_zstd_level1(benchmark):
    benchmark.extra_info["target_speedup"] = 2.0
    benchmark.extra_info["target"] = "zstd level 1 at least 2x faster than gzip level 6"
    _codec_run(benchmark, Codec.ZSTD, FrameEncoder(zstd_level=1))


@pytest.mark.benchmark(group="frames-zstd-vs-gzip")
def test_codec_gzip_level1(benchmark):
    # For the record: gzip's fastest level, what a browser-only deployment could fall back to.
    _codec_run(benchmark, Codec.GZIP, FrameEncoder(gzip_level=1))
