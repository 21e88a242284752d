"""Histogram: compiled type held against the pure-Python reference, plus every bad input."""

from __future__ import annotations

import array
import contextlib
import copy
import math
import pickle
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore._histogram
from streamcore import CorruptDataError, Histogram, StreamcoreTypeError, StreamcoreValueError
from streamcore.reference.histogram import ReferenceHistogram, bucket_key

REL_ERROR = 1 / 128
FAST = settings(max_examples=60, deadline=None)

# Values across the whole range, plus underflow (incl. 0) and overflow.
values_st = st.lists(
    st.one_of(
        st.floats(min_value=1e-6, max_value=3600.0),
        st.floats(min_value=0.0, max_value=1e-6),
        st.floats(min_value=3600.0, max_value=1e7),
        st.sampled_from([0.0, -0.0, 1e-6, 3600.0, 1.0, 0.5]),
    ),
    max_size=200,
)
qs_st = st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=6)


def both(values: list[float]) -> tuple[Histogram, ReferenceHistogram]:
    h, r = Histogram(), ReferenceHistogram()
    for v in values:
        h.record(v)
        r.record(v)
    return h, r


def test_compiled_extension_is_loaded() -> None:
    assert streamcore._histogram.__file__.endswith(".so")
    assert Histogram is streamcore._histogram.Histogram


def test_default_layout_fits_16_kib() -> None:
    h = Histogram()
    assert h.nbytes == ReferenceHistogram().nslots * 8
    assert h.nbytes <= 16 * 1024
    assert (h.lowest, h.highest) == (1e-6, 3600.0)


def test_bucket_key_is_the_ieee_bit_pattern() -> None:
    for v in [1e-6, 0.001, 0.5, 1.0, 1.5, 3599.9, 3600.0]:
        assert bucket_key(v) == struct.unpack("<Q", struct.pack("<d", v))[0] >> 46


def test_empty_histogram_reports_zero() -> None:
    h = Histogram()
    assert (h.count, h.sum, h.min, h.max, h.mean) == (0, 0.0, 0.0, 0.0, 0.0)
    assert h.percentile(99) == 0.0
    assert h.percentiles([50, 99]) == [0.0, 0.0]
    assert h.cumulative_counts([1.0, math.inf]) == [0, 0]
    uppers, counts = h.buckets()
    assert len(uppers) == len(counts) == 0


@FAST
@given(values_st, qs_st)
def test_matches_reference(values: list[float], qs: list[float]) -> None:
    h, r = both(values)
    assert h.count == r.count
    assert h.sum == r.sum
    assert (h.min, h.max, h.mean) == (r.min, r.max, r.mean)
    assert h.percentiles(qs) == r.percentiles(qs)
    assert [h.percentile(q) for q in qs] == r.percentiles(qs)
    edges = sorted({0.0, 1e-6, 0.001, 0.1, 1.0, 3600.0, math.inf, *values[:5]})
    assert h.cumulative_counts(edges) == r.cumulative_counts(edges)
    uppers, counts = h.buckets()
    assert counts.sum() == r.count
    assert list(counts) == [c for c in r.counts if c]
    assert np.all(np.diff(uppers) > 0)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=50, max_value=3000),
    st.floats(min_value=-8.0, max_value=2.0),
    st.floats(min_value=0.2, max_value=2.5),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_percentiles_within_relative_error_of_numpy(
    n: int, mu: float, sigma: float, seed: int
) -> None:
    x = np.random.default_rng(seed).lognormal(mu, sigma, n)
    x = x[(x >= 1e-6) & (x <= 3600.0)]
    if x.size == 0:
        return
    h = Histogram()
    h.record_many(x)
    qs = [0, 1, 7, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]
    # Nearest rank of the decimal q: numpy's inverted_cdf computes n * (q / 100) in floats, which
    # can land just above an integer (0.07 * 100 = 7.000000000000001) and pick the next rank.
    s = np.sort(x)
    ranks = [min(max(math.ceil(Fraction(str(q)) * x.size / 100), 1), x.size) for q in qs]
    exact = s[np.array(ranks) - 1]
    unambiguous = [0, 50, 100]
    assert list(np.percentile(x, unambiguous, method="inverted_cdf")) == [
        exact[qs.index(q)] for q in unambiguous
    ]
    got = np.array(h.percentiles(qs))
    assert np.all(np.abs(got - exact) <= REL_ERROR * exact * (1 + 1e-12))
    assert h.percentile(0) == x.min() and h.percentile(100) == x.max()


@FAST
@given(values_st, values_st)
def test_merge_equals_recording_both(a: list[float], b: list[float]) -> None:
    ha, _ = both(a)
    hb, _ = both(b)
    hab, _ = both(a + b)
    ha.merge(hb)
    assert ha == hab
    assert ha.count == hab.count
    assert ha.sum == pytest.approx(hab.sum, rel=1e-12, abs=1e-300)
    assert ha.percentiles([0, 50, 99, 100]) == hab.percentiles([0, 50, 99, 100])


@FAST
@given(values_st)
def test_record_many_equals_repeated_record(values: list[float]) -> None:
    one, _ = both(values)
    for arr in (np.array(values, dtype=np.float64), values):
        many = Histogram()
        many.record_many(arr)
        assert many == one
        assert many.sum == one.sum


def test_record_many_large_batch_equals_repeated_record() -> None:
    # Above the GIL-release threshold the batch goes through a scratch array.
    x = np.random.default_rng(7).lognormal(-4, 3, 20_000)
    x[::97] = 0.0
    many, one = Histogram(), Histogram()
    many.record_many(x)
    for v in x:
        one.record(float(v))
    assert many == one
    assert many.sum == pytest.approx(one.sum, rel=1e-12)


def test_record_many_accepts_read_only_and_array_buffers() -> None:
    x = np.linspace(0.001, 2.0, 10_000)
    x.flags.writeable = False
    h = Histogram()
    h.record_many(x)
    h.record_many(array.array("d", [0.5, 0.25]))
    h.record_many(memoryview(np.array([1.0])))
    assert h.count == 10_003


@FAST
@given(values_st)
def test_blob_round_trips(values: list[float]) -> None:
    h, _ = both(values)
    blob = h.to_bytes()
    back = Histogram.from_bytes(blob)
    assert back == h
    assert (back.sum, back.min, back.max) == (h.sum, h.min, h.max)
    assert back.to_bytes() == blob
    assert Histogram.from_bytes(bytearray(blob)) == h
    assert pickle.loads(pickle.dumps(h)) == h
    assert copy.deepcopy(h) == h


def test_blob_is_small_when_sparse_and_layout_travels() -> None:
    assert len(Histogram().to_bytes()) < 64
    h = Histogram(0.001, 10.0)
    h.record(0.5)
    back = Histogram.from_bytes(h.to_bytes())
    assert (back.lowest, back.highest, back.count) == (0.001, 10.0, 1)
    assert len(h.to_bytes()) < 64


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_from_bytes(data: bytes) -> None:
    with contextlib.suppress(CorruptDataError):  # any other exception (or a crash) fails
        Histogram.from_bytes(data)


@settings(max_examples=150, deadline=None)
@given(values_st, st.data())
def test_mutated_blobs_decode_or_raise_corrupt(values: list[float], data: st.DataObject) -> None:
    blob = bytearray(both(values)[0].to_bytes())
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] = data.draw(st.integers(0, 255))
    try:
        h = Histogram.from_bytes(bytes(blob))
    except CorruptDataError:
        return
    assert sum(h.buckets()[1]) == h.count


def test_copy_and_reset_are_independent() -> None:
    h, _ = both([0.1, 0.2, 5000.0])
    c = h.copy()
    h.reset()
    assert h.count == 0 and h.max == 0.0 and h != c
    assert c.count == 3 and c.max == 5000.0
    assert h == Histogram()


def test_underflow_and_overflow_report_lowest_and_max() -> None:
    h = Histogram()
    h.record_many([0.0, 0.0, 1e-9, 1.0, 7200.0])
    assert h.min == 0.0 and h.max == 7200.0
    assert h.percentile(50) == 1e-6  # underflow reports lowest
    assert h.percentile(100) == 7200.0  # overflow reports the exact max
    z = Histogram()
    z.record(0.0)
    assert z.percentile(50) == 0.0  # clamped to [min, max]


def test_cumulative_counts_straddling_bucket_uses_reported_value() -> None:
    h = Histogram()
    h.record_many([1.0, 1.001, 1.02])  # 1.0 and 1.001 share the bucket [1, 1.015625)
    mid = 1.0078125
    assert h.cumulative_counts([1.0, mid - 1e-9, mid, 1.02, math.inf]) == [0, 0, 2, 3, 3]


def test_equality() -> None:
    assert Histogram() == Histogram()
    assert Histogram() != Histogram(1e-3, 10.0)
    assert Histogram() != "histogram"
    with pytest.raises(TypeError):
        hash(Histogram())


# -- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1e-9, -5.0])
def test_record_rejects_bad_values(bad: float) -> None:
    h = Histogram()
    with pytest.raises(StreamcoreValueError, match="finite, non-negative"):
        h.record(bad)
    assert h.count == 0


@pytest.mark.parametrize("bad", ["1.0", None, True, [1.0], 1j])
def test_record_rejects_wrong_types(bad: object) -> None:
    with pytest.raises(StreamcoreTypeError, match="real number"):
        Histogram().record(bad)  # type: ignore[arg-type]


def test_record_accepts_ints_and_numpy_scalars() -> None:
    h = Histogram()
    h.record(1)
    h.record(np.float32(0.5))
    h.record(np.int64(2))
    assert h.count == 3 and h.max == 2.0
    with pytest.raises(StreamcoreValueError, match="too large"):
        h.record(10**400)


@pytest.mark.parametrize("size", [10, 10_000])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_record_many_is_atomic_on_bad_values(size: int, bad: float) -> None:
    h = Histogram()
    h.record(0.5)
    x = np.full(size, 0.25)
    x[size - 3] = bad
    with pytest.raises(StreamcoreValueError, match=rf"values\[{size - 3}\]"):
        h.record_many(x)
    assert h.count == 1 and h.sum == 0.5 and h.min == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(4, dtype=np.float32),
        np.zeros((2, 2)),
        np.zeros(8)[::2],
        "abc",
        b"12345678",
        ["a", 1.0],
        [None],
        42,
    ],
)
def test_record_many_rejects_wrong_types(bad: object) -> None:
    h = Histogram()
    with pytest.raises(StreamcoreTypeError, match="record_many expects"):
        h.record_many(bad)
    assert h.count == 0


@pytest.mark.parametrize(
    ("lowest", "highest", "match"),
    [
        (0.0, 1.0, "0 < lowest < highest"),
        (-1.0, 1.0, "0 < lowest < highest"),
        (2.0, 1.0, "0 < lowest < highest"),
        (1.0, 1.0, "0 < lowest < highest"),
        (math.nan, 1.0, "finite"),
        (1e-6, math.inf, "finite"),
        (1e-6, math.nan, "finite"),
        (1e-310, 1.0, "normal float"),
        (1e-30, 1e30, r"2\*\*64"),
    ],
)
def test_bad_bounds(lowest: float, highest: float, match: str) -> None:
    with pytest.raises(StreamcoreValueError, match=match):
        Histogram(lowest, highest)


@pytest.mark.parametrize("bad", [("1e-6", 1.0), (1e-6, None), (True, 2.0)])
def test_bounds_of_wrong_type(bad: tuple[object, object]) -> None:
    with pytest.raises(StreamcoreTypeError, match="must be a real number"):
        Histogram(*bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [-0.1, 100.01, math.nan, math.inf])
def test_bad_q(q: float) -> None:
    h, _ = both([1.0])
    with pytest.raises(StreamcoreValueError, match=r"q must be in \[0, 100\]"):
        h.percentile(q)
    with pytest.raises(StreamcoreValueError, match=r"q must be in \[0, 100\]"):
        h.percentiles([50, q])
    with pytest.raises(StreamcoreTypeError, match="real number"):
        h.percentile("50")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edges", "exc", "match"),
    [
        ([1.0, 0.5], StreamcoreValueError, "strictly increasing"),
        ([1.0, 1.0], StreamcoreValueError, "strictly increasing"),
        ([0.1, math.nan], StreamcoreValueError, "NaN"),
        ([0.1, "1"], StreamcoreTypeError, "real number"),
    ],
)
def test_bad_edges(edges: list[object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Histogram().cumulative_counts(edges)  # type: ignore[arg-type]


def test_non_iterable_qs_and_edges() -> None:
    with pytest.raises(StreamcoreTypeError, match="qs must be an iterable"):
        Histogram().percentiles(50)  # type: ignore[arg-type]
    with pytest.raises(StreamcoreTypeError, match="edges must be an iterable"):
        Histogram().cumulative_counts(1.0)  # type: ignore[arg-type]


def test_merge_rejects_other_layouts_and_types() -> None:
    with pytest.raises(StreamcoreValueError, match="different layouts"):
        Histogram().merge(Histogram(1e-3, 10.0))
    with pytest.raises(StreamcoreTypeError, match="expects a Histogram"):
        Histogram().merge(ReferenceHistogram())  # type: ignore[arg-type]


def _blob() -> bytes:
    h, _ = both([0.001, 0.002, 0.5, 2.0, 2.0])
    return h.to_bytes()


def _patch(blob: bytes, offset: int, fmt: str, value: object) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:54], "truncated"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "version 2"),
        (lambda b: b[:5] + b"\x07" + b[6:], "sub-bucket bits"),
        (lambda b: _patch(b, 6, "<d", -1.0), "bad layout"),
        (lambda b: _patch(b, 14, "<d", math.nan), "bad layout"),
        (lambda b: _patch(b, 22, "<Q", 6), "sum to 5, header says count=6"),
        (lambda b: _patch(b, 38, "<d", math.nan), "bad statistics"),
        (lambda b: _patch(b, 38, "<d", 3.0), "bad statistics"),
        (lambda b: _patch(b, 46, "<d", 0.4), "first/last buckets"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:54] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "truncated"),
        (lambda b: b[:54] + b"\x05", "claims|truncated"),
        (lambda b: b[:54] + b"\x01\xff\x0f\x01", "past the last bucket"),
        (lambda b: b[:54] + b"\x01\x05\x00", "zero count"),
    ],
)
def test_corrupt_blobs(mutate: object, match: str) -> None:
    with pytest.raises(CorruptDataError, match=match):
        Histogram.from_bytes(mutate(_blob()))  # type: ignore[operator]


def test_empty_blob_with_statistics_is_corrupt() -> None:
    blob = _patch(Histogram().to_bytes(), 30, "<d", 1.0)
    with pytest.raises(CorruptDataError, match="empty histogram blob"):
        Histogram.from_bytes(blob)


def test_from_bytes_rejects_wrong_type() -> None:
    with pytest.raises(StreamcoreTypeError, match="expects bytes"):
        Histogram.from_bytes("SCHG")  # type: ignore[arg-type]
