"""Histogram: the compiled type against peer libraries, numpy and its reference, in the same run."""

import math

import numpy as np
import pytest
from ddsketch import DDSketch
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as PromHistogram

from streamcore import Histogram
from streamcore.reference.histogram import ReferenceHistogram

INNER = 1_000  # calls per round, so the timer's overhead doesn't dominate one ~40 ns call
MANY = 1_000_000
HDR_SLICE = 20_000
ACCURACY_N = 100_000
QS = [50.0, 95.0, 99.0]


def _latencies(n, seed=1):
    """Lognormal latencies around 20 ms, clipped into [1 us, 1 h]."""
    x = np.random.default_rng(seed).lognormal(mean=-4.0, sigma=1.5, size=n)
    return np.clip(x, 1e-6, 3600.0)


def _hdr():
    return HdrHistogram(1, 3_600_000_000_000, 3)  # nanoseconds, 3 significant digits


def _one_by_one(record, value=0.0123):
    def run():
        for _ in range(INNER):
            record(value)

    return run


# -- one value per call --------------------------------------------------------------------------


@pytest.mark.benchmark(group="histogram-record-one")
def test_record_one_hdrhistogram(benchmark):
    h = _hdr()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = INNER
    benchmark(_one_by_one(h.record_value, 12_300_000))
    assert h.get_total_count() > 0


@pytest.mark.benchmark(group="histogram-record-one")
def test_record_one_compiled(benchmark):
    h = Histogram()
    benchmark.extra_info["items"] = INNER
    benchmark.extra_info["target_speedup"] = 20.0
    benchmark.extra_info["target"] = "Histogram.record >= 20x faster than HdrHistogram.record_value"
    benchmark(_one_by_one(h.record))
    assert h.count > 0


@pytest.mark.benchmark(group="histogram-record-one")
def test_record_one_ddsketch(benchmark):
    s = DDSketch(relative_accuracy=0.01)
    benchmark.extra_info["items"] = INNER
    benchmark(_one_by_one(s.add))
    assert s.count > 0


@pytest.mark.benchmark(group="histogram-record-one")
def test_record_one_prometheus_client(benchmark):
    h = PromHistogram("latency_seconds", "bench", registry=CollectorRegistry())
    benchmark.extra_info["items"] = INNER
    benchmark(_one_by_one(h.observe))


def _empty(x):
    pass


@pytest.mark.benchmark(group="histogram-record-vs-empty-call")
def test_empty_python_call(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = INNER
    benchmark(_one_by_one(_empty))


@pytest.mark.benchmark(group="histogram-record-vs-empty-call")
def test_record_one_compiled_vs_empty_call(benchmark):
    h = Histogram()
    benchmark.extra_info["items"] = INNER
    benchmark.extra_info["target_speedup"] = 0.5
    benchmark.extra_info["target"] = "Histogram.record at most 2x the cost of an empty Python call"
    benchmark(_one_by_one(h.record))
    assert h.count > 0


# -- batches ---------------------------------------------------------------------------------


class NumpyLogHistogram:
    """The numpy way, done well: validate with min/max, log2 buckets, one bincount per batch."""

    def __init__(self, lowest=1e-6, highest=3600.0, per_octave=64):
        self.log2_lowest = math.log2(lowest)
        self.scale = float(per_octave)
        self.nbuckets = math.ceil((math.log2(highest) - self.log2_lowest) * per_octave)
        self.counts = np.zeros(self.nbuckets + 2, dtype=np.int64)  # + underflow + overflow
        self.count, self.sum, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def record_many(self, values):
        mn, mx = values.min(), values.max()  # NaN propagates, so this validates too
        if not (mn >= 0.0 and mx < math.inf):
            raise ValueError("values must be finite and non-negative")
        with np.errstate(divide="ignore"):
            idx = np.log2(values)  # -inf for 0.0, clipped into the underflow bucket
        idx -= self.log2_lowest
        idx *= self.scale
        np.clip(idx, -1.0, float(self.nbuckets), out=idx)
        self.counts += np.bincount(idx.astype(np.intp) + 1, minlength=self.counts.size)
        self.count += values.size
        self.sum += float(values.sum())
        self.min, self.max = min(self.min, float(mn)), max(self.max, float(mx))


class NumpyBitsHistogram(NumpyLogHistogram):
    """Faster numpy: the same IEEE-bits layout as streamcore (no log), one bincount per batch."""

    def __init__(self, lowest=1e-6, highest=3600.0):
        super().__init__(lowest, highest)
        self.base = int(np.array(lowest).view(np.uint64) >> 46)
        self.top = int(np.array(highest).view(np.uint64) >> 46) - self.base
        self.counts = np.zeros(self.top + 3, dtype=np.int64)

    def record_many(self, values):
        mn, mx = values.min(), values.max()
        if not (mn >= 0.0 and mx < math.inf):
            raise ValueError("values must be finite and non-negative")
        keys = (values.view(np.int64) >> 46) - (self.base - 1)
        np.clip(keys, 0, self.top + 2, out=keys)
        self.counts += np.bincount(keys, minlength=self.counts.size)
        self.count += values.size
        self.sum += float(values.sum())
        self.min, self.max = min(self.min, float(mn)), max(self.max, float(mx))


@pytest.mark.benchmark(group="histogram-record-many")
def test_record_many_numpy_log_bincount(benchmark):
    x, h = _latencies(MANY), NumpyLogHistogram()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = MANY
    benchmark(h.record_many, x)
    assert h.counts.sum() == h.count


@pytest.mark.benchmark(group="histogram-record-many")
def test_record_many_compiled(benchmark):
    x, h = _latencies(MANY), Histogram()
    benchmark.extra_info["items"] = MANY
    benchmark.extra_info["target_speedup"] = 3.0
    benchmark.extra_info["target"] = (
        "record_many(1e6) >= 3x faster than numpy log-bucket + bincount"
    )
    benchmark(h.record_many, x)
    assert h.count % MANY == 0


@pytest.mark.benchmark(group="histogram-record-many")
def test_record_many_numpy_bits_bincount(benchmark):
    x, h = _latencies(MANY), NumpyBitsHistogram()
    benchmark.extra_info["items"] = MANY
    benchmark(h.record_many, x)
    assert h.counts.sum() == h.count


@pytest.mark.benchmark(group="histogram-record-many")
def test_record_many_hdrhistogram_loop(benchmark):
    ns = [int(v) for v in _latencies(HDR_SLICE) * 1e9]
    h = _hdr()
    benchmark.extra_info["items"] = HDR_SLICE

    def run():
        for v in ns:
            h.record_value(v)

    benchmark.pedantic(run, rounds=5, iterations=1)


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.benchmark(group="histogram-percentiles")
def test_percentiles_reference(benchmark):
    r = ReferenceHistogram()
    r.record_many(_latencies(ACCURACY_N).tolist())
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = len(QS)
    benchmark(r.percentiles, QS)


@pytest.mark.benchmark(group="histogram-percentiles")
def test_percentiles_compiled(benchmark):
    x = _latencies(ACCURACY_N)
    h, r = Histogram(), ReferenceHistogram()
    h.record_many(x)
    r.record_many(x.tolist())
    benchmark.extra_info["items"] = len(QS)
    benchmark.extra_info["target"] = "p50/p95/p99 together in under 20 us (just reported)"
    got = benchmark(h.percentiles, QS)
    assert got == r.percentiles(QS)
    benchmark.extra_info["p50_p95_p99_us"] = round(benchmark.stats.stats.median * 1e6, 3)


# -- accuracy: same 1e5 lognormal samples into each, error against the exact nearest rank --------

ACCURACY_QS = [50.0, 90.0, 95.0, 99.0, 99.9]


def _exact(x):
    s = np.sort(x)
    return [s[min(max(math.ceil(q * s.size / 100), 1), s.size) - 1] for q in ACCURACY_QS]


def _max_relative_error(got, exact):
    return max(abs(g - e) / e for g, e in zip(got, exact, strict=True))


@pytest.mark.benchmark(group="histogram-accuracy")
def test_accuracy_hdrhistogram(benchmark):
    x = _latencies(ACCURACY_N, seed=5)
    ns = [round(v * 1e9) for v in x]

    def run():
        h = _hdr()
        for v in ns:
            h.record_value(v)
        return [h.get_value_at_percentile(q) / 1e9 for q in ACCURACY_QS]

    got = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = ACCURACY_N
    benchmark.extra_info["relative_error"] = _max_relative_error(got, _exact(x))


@pytest.mark.benchmark(group="histogram-accuracy")
def test_accuracy_ddsketch(benchmark):
    x = _latencies(ACCURACY_N, seed=5)
    values = x.tolist()

    def run():
        s = DDSketch(relative_accuracy=0.01)
        for v in values:
            s.add(v)
        return [s.get_quantile_value(q / 100) for q in ACCURACY_QS]

    got = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["items"] = ACCURACY_N
    benchmark.extra_info["relative_error"] = _max_relative_error(got, _exact(x))


@pytest.mark.benchmark(group="histogram-accuracy")
def test_accuracy_compiled(benchmark):
    x = _latencies(ACCURACY_N, seed=5)

    def run():
        h = Histogram()
        h.record_many(x)
        return h.percentiles(ACCURACY_QS)

    got = benchmark(run)
    error = _max_relative_error(got, _exact(x))
    benchmark.extra_info["items"] = ACCURACY_N
    benchmark.extra_info["relative_error"] = error
    benchmark.extra_info["target"] = "relative error <= 1/128 (0.78%) in [1 us, 1 h]"
    assert error <= 1 / 128
