"""Conflation: compiled Conflator/IntConflator against the plain dict loop, in one run."""

import operator

import numpy as np
import pytest

from streamcore import Conflator, IntConflator
from streamcore.reference.conflation import ReferenceConflator

PUSH_EVENTS = 100_000
PUSH_KEYS = 10_000
BATCH_UPDATES = 1_000_000
BATCH_KEYS = 10_000


def _str_events(repeated=False):
    """1e5 events over 1e4 entity keys; each key a fresh str, as the app builds it per write.

    With repeated=True every event of a key carries the same str object (an app that caches its
    key strings), which lets a lookup succeed on identity.
    """
    rng = np.random.default_rng(11)
    ids = rng.integers(0, PUSH_KEYS, size=PUSH_EVENTS).tolist()
    keys = [f"property:{i}:balance" for i in ids]
    if repeated:
        canonical = {}
        keys = [canonical.setdefault(k, k) for k in keys]
    payloads = [b'{"id":%d,"balance":"%d.00"}' % (i, n) for n, i in enumerate(ids)]
    return keys, payloads


def _int_batch():
    rng = np.random.default_rng(12)
    keys = rng.integers(0, BATCH_KEYS, size=BATCH_UPDATES, dtype=np.int64)
    refs = np.arange(BATCH_UPDATES, dtype=np.int64)
    return keys, refs


def _dict_loop(keys, payloads):
    """The obvious Python for the same work: latest payload per key, first-seen order, as a list."""

    def run():
        latest = {}
        for key, payload in zip(keys, payloads, strict=True):
            latest[key] = payload  # an update keeps the key's first-insertion position
        return list(latest.values())

    return run


def _push_one_by_one(conflator, keys, payloads):
    """Each call: one window of 1e5 per-event pushes, then its drain."""

    def run():
        push = conflator.push
        for key, payload in zip(keys, payloads, strict=True):
            push(key, payload)
        return conflator.drain()

    return run


def _empty_calls(keys, payloads):
    """The same loop calling a two-argument C function that does nothing: a per-event floor."""

    def run():
        call = operator.is_  # METH_FASTCALL, as Cython's methods are: no work but the call
        for key, payload in zip(keys, payloads, strict=True):
            call(key, payload)
        return None

    return run


def _push_many(conflator, keys, payloads):
    def run():
        conflator.push_many(keys, payloads)
        return conflator.drain()

    return run


def _expected(keys, payloads):
    return _dict_loop(keys, payloads)()


PUSH_TARGET = "Conflator.push (str keys, 1e4 distinct) at least 2x the plain dict loop"
PUSH_MANY_TARGET = "Conflator.push_many (str keys, 1e4 distinct) at least 4x the plain dict loop"


@pytest.mark.benchmark(group="conflation-push-str")
def test_push_str_dict_loop(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_dict_loop(keys, payloads))
    assert len(out) == len(set(keys))


@pytest.mark.benchmark(group="conflation-push-str")
def test_push_str_empty_call_floor(benchmark):
    """Not a subject: the loop and call alone, which bounds how fast push can be."""
    keys, payloads = _str_events()
    benchmark.extra_info["items"] = PUSH_EVENTS
    benchmark.extra_info["note"] = "loop + empty C call per event: push's floor"
    assert benchmark(_empty_calls(keys, payloads)) is None


@pytest.mark.benchmark(group="conflation-push-str")
def test_push_str_reference(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_push_one_by_one(ReferenceConflator(), keys, payloads))
    assert out == _expected(keys, payloads)


@pytest.mark.benchmark(group="conflation-push-str")
def test_push_str_compiled(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["items"] = PUSH_EVENTS
    benchmark.extra_info["target_speedup"] = 2.0
    benchmark.extra_info["target"] = PUSH_TARGET
    out = benchmark(_push_one_by_one(Conflator(), keys, payloads))
    assert out == _expected(keys, payloads)


@pytest.mark.benchmark(group="conflation-push-str")
def test_push_many_str_compiled(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["items"] = PUSH_EVENTS
    benchmark.extra_info["target_speedup"] = 4.0
    benchmark.extra_info["target"] = PUSH_MANY_TARGET
    out = benchmark(_push_many(Conflator(), keys, payloads))
    assert out == _expected(keys, payloads)


@pytest.mark.benchmark(group="conflation-push-str-repeated")
def test_push_str_repeated_dict_loop(benchmark):
    keys, payloads = _str_events(repeated=True)
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_dict_loop(keys, payloads))
    assert len(out) == len(set(keys))


@pytest.mark.benchmark(group="conflation-push-str-repeated")
def test_push_str_repeated_compiled(benchmark):
    """The same events with one str object per key (no target: the targets are for fresh keys)."""
    keys, payloads = _str_events(repeated=True)
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_push_one_by_one(Conflator(), keys, payloads))
    assert out == _expected(keys, payloads)


@pytest.mark.benchmark(group="conflation-push-str-repeated")
def test_push_many_str_repeated_compiled(benchmark):
    keys, payloads = _str_events(repeated=True)
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_push_many(Conflator(), keys, payloads))
    assert out == _expected(keys, payloads)


@pytest.mark.benchmark(group="conflation-batch-int64")
def test_batch_int64_dict_loop(benchmark):
    """Baseline: the dict loop over Python ints; the lists are prepared outside the timed call."""
    keys, refs = _int_batch()
    keys_list, refs_list = keys.tolist(), refs.tolist()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = BATCH_UPDATES

    def run():
        d = {}
        for k, r in zip(keys_list, refs_list, strict=True):
            d[k] = r
        return d

    out = benchmark(run)
    assert len(out) == BATCH_KEYS


@pytest.mark.benchmark(group="conflation-batch-int64")
def test_batch_int64_compiled(benchmark):
    keys, refs = _int_batch()
    c = IntConflator()
    benchmark.extra_info["items"] = BATCH_UPDATES
    benchmark.extra_info["target_speedup"] = 20.0
    benchmark.extra_info["target"] = "IntConflator.push_many + drain at least 20x the dict loop"

    def run():
        c.push_many(keys, refs)
        return c.drain()

    out_keys, out_refs = benchmark(run)
    assert len(out_keys) == BATCH_KEYS
    assert out_refs.max() == BATCH_UPDATES - 1


@pytest.mark.benchmark(group="conflation-batch-int64")
def test_batch_int64_payloads_compiled(benchmark):
    """Conflator.push_int_many: the same keys with bytes payloads (no target)."""
    keys, _ = _int_batch()
    payloads = [b'{"v":%d}' % (i % 1000) for i in range(BATCH_UPDATES)]
    c = Conflator()
    benchmark.extra_info["items"] = BATCH_UPDATES

    def run():
        c.push_int_many(keys, payloads)
        return c.drain()

    out = benchmark(run)
    assert len(out) == BATCH_KEYS
