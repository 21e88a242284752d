"""Grid windows: the compiled scheduler against its pure-Python reference, in the same run."""

import numpy as np
import pytest

from streamcore import WindowScheduler
from streamcore.reference.window import ReferenceWindowScheduler

TOUCH_EVENTS = 100_000
TOUCH_CHANNELS = 1_000
ACTIVE = 10


def _events():
    rng = np.random.default_rng(7)
    return rng.integers(0, TOUCH_CHANNELS, size=TOUCH_EVENTS).astype(np.int64)


def _touch_round(scheduler, touch):
    """Each call: close the last round's windows, then count 1e5 events (opening 1e3 windows)."""
    clock = [0.0]

    def run():
        clock[0] += 1000.0
        scheduler.due(clock[0])
        return touch(clock[0])

    return run


@pytest.mark.benchmark(group="window-touch")
def test_touch_many_reference(benchmark):
    ids, s = _events(), ReferenceWindowScheduler()
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = TOUCH_EVENTS
    opened = benchmark(_touch_round(s, lambda now: s.touch_many(ids, now)))
    assert opened == TOUCH_CHANNELS


@pytest.mark.benchmark(group="window-touch")
def test_touch_many_compiled(benchmark):
    ids, s = _events(), WindowScheduler()
    benchmark.extra_info["items"] = TOUCH_EVENTS
    benchmark.extra_info["target_speedup"] = 20.0
    benchmark.extra_info["target"] = "touch_many at least 20x the reference's loop (aim)"
    opened = benchmark(_touch_round(s, lambda now: s.touch_many(ids, now)))
    assert opened == TOUCH_CHANNELS


@pytest.mark.benchmark(group="window-touch")
def test_touch_one_by_one_compiled(benchmark):
    ids, s = _events().tolist(), WindowScheduler()
    benchmark.extra_info["items"] = TOUCH_EVENTS
    touch = s.touch

    def loop(now):
        opened = 0
        for ch in ids:
            opened += touch(ch, now)
        return opened

    assert benchmark(_touch_round(s, loop)) == TOUCH_CHANNELS


def _due_round(known):
    """Each call: wake ACTIVE channels, then flush them; `known` channels exist, mostly idle."""
    s = WindowScheduler()
    ids = np.arange(known, dtype=np.int64) * 7919
    s.touch_many(ids, 0.0)
    s.due(1000.0)
    active = ids[:: known // ACTIVE][:ACTIVE].copy()
    clock = [1000.0]

    def run():
        clock[0] += 1000.0
        s.touch_many(active, clock[0])
        return s.due(clock[0] + 150.0)

    return s, run


@pytest.mark.benchmark(group="window-due-idle")
def test_due_with_100_known(benchmark):
    s, run = _due_round(100)
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = ACTIVE
    assert len(benchmark(run)) == ACTIVE
    assert len(s.channels) == 100


@pytest.mark.benchmark(group="window-due-idle")
def test_due_with_100k_known_idle(benchmark):
    s, run = _due_round(100_000)
    benchmark.extra_info["items"] = ACTIVE
    benchmark.extra_info["target_speedup"] = 0.5
    benchmark.extra_info["target"] = "flat in idle channels: 100k known within 2x of 100 known"
    assert len(benchmark(run)) == ACTIVE
    assert len(s.channels) == 100_000


FLUSH_REPORTS = 1_000


def _flush_reports(scheduler):
    """Each call: FLUSH_REPORTS flush passes, 3 ms apart, each costing 0.5 ms of CPU."""
    clock = [0.0]
    report = scheduler.observe_flush

    def run():
        for _ in range(FLUSH_REPORTS):
            clock[0] += 3.0
            report(clock[0], 0.5)
        return scheduler.load

    return run


@pytest.mark.benchmark(group="window-load")
def test_observe_flush_reference(benchmark):
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = FLUSH_REPORTS
    s = ReferenceWindowScheduler()
    assert benchmark(_flush_reports(s)) == pytest.approx(0.5 / 3.0, rel=1e-6)
    assert s.length_ms == 30.0  # under the budget: the shortest window


@pytest.mark.benchmark(group="window-load")
def test_observe_flush_compiled(benchmark):
    benchmark.extra_info["items"] = FLUSH_REPORTS
    benchmark.extra_info["target_speedup"] = 3.0
    benchmark.extra_info["target"] = "one call per flush pass: at least 3x the reference"
    s = WindowScheduler()
    assert benchmark(_flush_reports(s)) == pytest.approx(0.5 / 3.0, rel=1e-6)
    assert s.length_ms == 30.0  # under the budget: the shortest window
