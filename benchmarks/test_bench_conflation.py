"""Conflation: compiled Conflator/IntConflator against the reference and a dict, in one run."""

import numpy as np
import pytest

from streamcore import Conflator, IntConflator
from streamcore.reference.conflation import ReferenceConflator

PUSH_EVENTS = 100_000
PUSH_KEYS = 10_000
BATCH_UPDATES = 1_000_000
BATCH_KEYS = 10_000


def _str_events():
    """1e5 events over 1e4 entity keys; each key is a fresh str, as the app builds it per write."""
    rng = np.random.default_rng(11)
    ids = rng.integers(0, PUSH_KEYS, size=PUSH_EVENTS).tolist()
    keys = [f"property:{i}:balance" for i in ids]
    payloads = [b'{"id":%d,"balance":"%d.00"}' % (i, n) for n, i in enumerate(ids)]
    return keys, payloads


def _int_batch():
    rng = np.random.default_rng(12)
    keys = rng.integers(0, BATCH_KEYS, size=BATCH_UPDATES, dtype=np.int64)
    refs = np.arange(BATCH_UPDATES, dtype=np.int64)
    return keys, refs


def _push_one_by_one(conflator, keys, payloads):
    """Each call: one window of 1e5 per-event pushes, then its drain."""

    def run():
        push = conflator.push
        for key, payload in zip(keys, payloads, strict=True):
            push(key, payload)
        return conflator.drain()

    return run


@pytest.mark.benchmark(group="conflation-push-one")
def test_push_one_reference(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = PUSH_EVENTS
    out = benchmark(_push_one_by_one(ReferenceConflator(), keys, payloads))
    assert len(out) == len(set(keys))


@pytest.mark.benchmark(group="conflation-push-one")
def test_push_one_compiled(benchmark):
    keys, payloads = _str_events()
    benchmark.extra_info["items"] = PUSH_EVENTS
    benchmark.extra_info["target_speedup"] = 2.0
    benchmark.extra_info["target"] = (
        "Conflator.push (str keys, 1e4 distinct) at least 2x ReferenceConflator.push"
    )
    out = benchmark(_push_one_by_one(Conflator(), keys, payloads))
    assert len(out) == len(set(keys))


@pytest.mark.benchmark(group="conflation-push-one")
def test_push_many_str_compiled(benchmark):
    """The batch call over the same events, for comparison with the per-event loop (no target)."""
    keys, payloads = _str_events()
    c = Conflator()
    benchmark.extra_info["items"] = PUSH_EVENTS

    def run():
        c.push_many(keys, payloads)
        return c.drain()

    out = benchmark(run)
    assert len(out) == len(set(keys))


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
