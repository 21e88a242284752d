"""Valid inputs each target starts from, so the fuzzer mutates real frames and requests."""

from __future__ import annotations

import orjson

from streamcore import Codec, FrameEncoder, Histogram


def seeds(name: str) -> list[bytes]:
    if name == "frame":
        payloads = [orjson.dumps({"type": "t", "key": f"k{i}", "data": i}) for i in range(40)]
        encoder = FrameEncoder(64)
        return [
            encoder.encode(7, payloads, codec) for codec in (Codec.NONE, Codec.ZSTD, Codec.GZIP)
        ]
    if name == "histogram":
        h = Histogram()
        for v in (1e-5, 0.003, 0.2, 1.5, 42.0):
            h.record(v)
        return [Histogram().to_bytes(), h.to_bytes()]
    if name == "idempotency_key":
        return [b"k-1", b'"quoted \\" key"', b"a\nb", b"x" * 255]
    if name == "query":
        return [
            b"propertyId=1&from=2025-01-01T00:00:00Z&to=2025-02-01T00:00:00%2B05:30&limit=5",
            b"cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgM10&propertyId=2",
        ]
    if name == "json_bodies":
        return [
            orjson.dumps(
                {
                    "propertyId": 1,
                    "category": "maintenance",
                    "amountCents": 50000,
                    "currency": "INR",
                    "expenseDate": "2025-12-13T10:00:00Z",
                    "paymentMode": "cash",
                }
            ),
            b'{"email": "user@example.com", "password": "changeme"}',
            b'{"events": [{"type": "a", "key": "k", "data": {"x": [1, 2.5, null]}}]}',
        ]
    raise KeyError(name)
