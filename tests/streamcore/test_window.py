"""Adaptive batch windows: the compiled core against its rule and its pure-Python reference."""

import importlib.machinery
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore
from streamcore import StreamcoreTypeError, StreamcoreValueError, _window
from streamcore._window import AdaptiveWindow, WindowScheduler
from streamcore.reference.window import ReferenceAdaptiveWindow, ReferenceWindowScheduler

SCHEDULERS = [WindowScheduler, ReferenceWindowScheduler]
WINDOWS = [AdaptiveWindow, ReferenceAdaptiveWindow]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def expected_length(rate, min_ms=30.0, max_ms=150.0, quiet=10.0, busy=1000.0):
    """The documented rule, written independently of both implementations."""
    if rate <= quiet:
        return min_ms
    f = min(1.0, math.log(rate / quiet) / math.log(busy / quiet))
    return min_ms + (max_ms - min_ms) * f


def test_compiled_module_is_loaded():
    assert _window.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert streamcore.WindowScheduler is WindowScheduler
    assert streamcore.AdaptiveWindow is AdaptiveWindow
    assert not hasattr(WindowScheduler(), "__dict__")  # an extension type, not a Python class


# -- AdaptiveWindow ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", WINDOWS)
def test_fresh_window_is_short(cls):
    w = cls()
    assert w.length_ms == 30.0
    assert w.rate == 0.0


@pytest.mark.parametrize("cls", WINDOWS)
def test_observe_follows_the_documented_formula(cls):
    w = cls(alpha=0.9)
    length = w.observe(50, 100.0)  # 500 ev/s for 100 ms
    weight = 1.0 - 0.1 ** (100.0 / 1000.0)
    assert w.rate == pytest.approx(weight * 500.0, rel=1e-12)
    assert length == pytest.approx(expected_length(weight * 500.0), rel=1e-12)
    assert w.length_ms == length
    rate = w.rate
    w.wake(1000.0)  # one second of silence keeps 1 - alpha of the rate
    assert w.rate == pytest.approx(rate * 0.1, rel=1e-12)


@pytest.mark.parametrize("cls", WINDOWS)
def test_quiet_channel_keeps_min_window(cls):
    w = cls()
    for _ in range(200):  # one event every 200 ms: 5 ev/s
        w.wake(170.0)
        assert w.length_ms == 30.0
        w.observe(1, 30.0)
    assert w.rate < 10.0


@pytest.mark.parametrize("cls", WINDOWS)
def test_busy_channel_grows_to_max_and_never_beyond(cls):
    w = cls()
    lengths = []
    for _ in range(100):  # 5000 ev/s, back to back
        lengths.append(w.observe(int(w.length_ms * 5), w.length_ms))
    assert lengths == sorted(lengths)
    assert lengths[-1] == 150.0
    assert max(lengths) <= 150.0
    assert 30.0 < lengths[0] < 150.0


@pytest.mark.parametrize("cls", WINDOWS)
def test_busy_channel_decays_back_to_quiet_when_idle(cls):
    w = cls()
    for _ in range(50):
        w.observe(300, 150.0)
    assert w.length_ms == 150.0
    mid = w.wake(1000.0)  # 2000 ev/s * 0.1 = ~200 ev/s
    assert 30.0 < mid < 150.0
    assert w.wake(5000.0) == 30.0


@pytest.mark.parametrize("cls", WINDOWS)
def test_min_equals_max_pins_the_window(cls):
    w = cls(min_ms=50.0, max_ms=50.0)
    assert w.observe(10**6, 50.0) == 50.0
    assert w.wake(0.0) == 50.0


window_ops = st.lists(
    st.tuples(
        st.integers(0, 10**5),
        st.floats(0.001, 10**4, allow_nan=False),
        st.floats(0.0, 10**5, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=window_ops, min_ms=st.floats(1.0, 100.0), extra=st.floats(0.0, 500.0))
def test_adaptive_window_matches_reference(ops, min_ms, extra):
    w, ref = AdaptiveWindow(min_ms, min_ms + extra), ReferenceAdaptiveWindow(min_ms, min_ms + extra)
    for events, elapsed, idle in ops:
        if idle > 5 * 10**4:
            assert w.wake(idle) == ref.wake(idle)
        else:
            assert w.observe(events, elapsed, idle) == ref.observe(events, elapsed, idle)
        assert w.rate == ref.rate
        assert min_ms <= w.length_ms <= min_ms + extra


# -- WindowScheduler -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_window_closes_exactly_at_its_deadline(cls):
    s = cls()
    assert s.touch(7, 100.0) is True
    assert s.touch(7, 110.0, events=3) is False  # counts in the open window
    assert s.next_deadline() == 130.0
    assert s.due(129.999).tolist() == []
    assert s.is_active(7)
    out = s.due(130.0)
    assert out.dtype == np.int64
    assert out.tolist() == [7]
    assert not s.is_active(7)
    assert s.next_deadline() is None
    assert len(s) == 0
    assert (s.windows_opened, s.windows_closed) == (1, 1)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_late_flush_measures_the_real_elapsed_time(cls):
    s = cls()
    s.touch(1, 0.0, events=60)
    s.due(60.0)  # 30 ms late: 60 events over 60 ms, i.e. 1000 ev/s
    w = ReferenceAdaptiveWindow()
    w.observe(60, 60.0)
    assert s.rate(1) == pytest.approx(w.rate, rel=1e-12)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_due_orders_by_deadline_then_channel(cls):
    s = cls()
    for ch, t in [(5, 0.0), (3, 0.0), (-4, 0.0), (INT64_MAX, 0.5), (INT64_MIN, 0.5), (9, 1.0)]:
        s.touch(ch, t)
    assert s.due(1000.0).tolist() == [-4, 3, 5, INT64_MIN, INT64_MAX, 9]


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_busy_channel_grows_and_decays_under_the_scheduler(cls):
    s = cls()
    seen = []
    t = 0.0
    for _ in range(5000):  # 2 events every ms: 2000 ev/s
        s.touch(42, t, events=2)
        if s.due(t).size:
            seen.append(s.window_ms(42))
        t += 1.0
    assert seen[-1] == 150.0
    assert all(30.0 <= x <= 150.0 for x in seen)
    assert seen == sorted(seen)
    s.due(t + 150.0)
    assert s.touch(42, t + 5000.0) is True  # 5 s of silence: 2000 * 0.1**5 << 10 ev/s
    assert s.window_ms(42) == 30.0
    assert s.rate(42) < 1.0


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_quiet_channel_gets_min_window(cls):
    s = cls()
    for i in range(100):  # 5 ev/s
        assert s.touch(1, i * 200.0) is True
        assert s.window_ms(1) == 30.0
        assert s.due(i * 200.0 + 30.0).tolist() == [1]


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_idle_channels_never_come_due(cls):
    s = cls()
    s.touch_many(np.arange(20, dtype=np.int64), 0.0)
    assert len(s.due(150.0)) == 20
    s.touch(3, 200.0)
    assert s.due(10_000.0).tolist() == [3]
    assert s.due(20_000.0).tolist() == []
    assert len(s.channels) == 20


def test_hundred_thousand_idle_channels_cost_nothing_in_due():
    s = WindowScheduler()
    ids = np.arange(100_000, dtype=np.int64) * 7919 - 10**9
    assert s.touch_many(ids, 0.0) == 100_000
    assert len(s) == 100_000
    assert s.due(1000.0).tolist() == sorted(ids.tolist())  # equal deadlines: channel order
    assert len(s) == 0
    assert s.next_deadline() is None
    active = ids[::10_000][::-1].copy()
    assert s.touch_many(active, 2000.0) == 10
    assert len(s) == 10
    assert s.due(2000.0 + 29.0).tolist() == []
    assert s.due(3000.0).tolist() == sorted(active.tolist())
    assert len(s.channels) == 100_000
    per_channel = s.nbytes / len(s.channels)
    assert per_channel < 200, per_channel  # array + index with doubling slack


def test_nbytes_grows_with_known_channels():
    s = WindowScheduler()
    small = s.nbytes
    s.touch_many(np.arange(10_000, dtype=np.int64), 0.0)
    assert s.nbytes > small
    assert s.nbytes >= 10_000 * 48


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_zero_events_is_a_no_op(cls):
    s = cls()
    assert s.touch(1, 0.0, events=0) is False
    assert len(s.channels) == 0
    with pytest.raises(KeyError):
        s.window_ms(1)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_forget(cls):
    s = cls()
    s.touch(1, 0.0)
    s.touch(2, 0.0)
    assert s.forget(1) is True
    assert s.forget(1) is False
    assert s.forget(99) is False
    assert len(s) == 1
    assert s.due(1000.0).tolist() == [2]
    assert s.channels.tolist() == [2]
    assert s.touch(1, 1000.0) is True  # a forgotten channel starts afresh
    assert s.rate(1) == 0.0


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_event_count_saturates(cls):
    s = cls()
    s.touch(1, 0.0, events=INT64_MAX)
    s.touch(1, 1.0, events=INT64_MAX)
    s.due(30.0)
    assert math.isfinite(s.rate(1))
    assert s.window_ms(1) == 150.0


def test_touch_many_accepts_read_only_arrays():
    ids = np.array([3, 1, 3], dtype=np.int64)
    ids.setflags(write=False)
    s = WindowScheduler()
    assert s.touch_many(ids, 0.0) == 2
    assert s.touch_many(np.empty(0, dtype=np.int64), 1.0) == 0


# -- against the reference -----------------------------------------------------------------------

channel_ids = st.one_of(st.integers(-40, 160), st.sampled_from([INT64_MIN, INT64_MAX, 0]))
dt = st.one_of(st.sampled_from([0.0, 1.0, 30.0, 150.0, 10_000.0]), st.floats(0.0, 400.0))
scheduler_ops = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), channel_ids, dt, st.integers(0, 3000)),
        st.tuples(st.just("many"), st.lists(channel_ids, max_size=60), dt),
        st.tuples(st.just("due"), dt),
        st.tuples(st.just("forget"), channel_ids),
    ),
    max_size=80,
)


def assert_same_state(s, ref, rule):
    assert len(s) == len(ref)
    assert s.next_deadline() == ref.next_deadline()
    assert s.channels.tolist() == ref.channels.tolist()
    assert (s.windows_opened, s.windows_closed) == (ref.windows_opened, ref.windows_closed)
    for ch in ref.channels.tolist():
        assert s.window_ms(ch) == ref.window_ms(ch)
        assert s.rate(ch) == ref.rate(ch)
        assert s.is_active(ch) == ref.is_active(ch)
        assert rule["min_ms"] <= s.window_ms(ch) <= rule["max_ms"]


@settings(max_examples=120, deadline=None)
@given(
    ops=scheduler_ops,
    rule=st.sampled_from(
        [
            {"min_ms": 30.0, "max_ms": 150.0},
            {"min_ms": 1.0, "max_ms": 400.0, "quiet_rate": 0.5, "busy_rate": 50.0, "alpha": 0.3},
            {"min_ms": 20.0, "max_ms": 20.0, "alpha": 0.999},
        ]
    ),
)
def test_scheduler_matches_reference(ops, rule):
    s, ref = WindowScheduler(**rule), ReferenceWindowScheduler(**rule)
    rule = {"min_ms": s.min_ms, "max_ms": s.max_ms}
    now = 0.0
    for op in ops:
        if op[0] == "touch":
            _, ch, step, events = op
            now += step
            assert s.touch(ch, now, events) == ref.touch(ch, now, events)
        elif op[0] == "many":
            _, chs, step = op
            now += step
            arr = np.array(chs, dtype=np.int64)
            assert s.touch_many(arr, now) == ref.touch_many(arr, now)
        elif op[0] == "due":
            now += op[1]
            assert s.due(now).tolist() == ref.due(now).tolist()
        else:
            assert s.forget(op[1]) == ref.forget(op[1])
        assert len(s) == len(ref)
    assert_same_state(s, ref, rule)
    now += 10**6
    assert s.due(now).tolist() == ref.due(now).tolist()
    assert_same_state(s, ref, rule)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_scheduler_matches_reference_on_many_channels(seed):
    rng = np.random.default_rng(seed)
    s, ref = WindowScheduler(), ReferenceWindowScheduler()
    rule = {"min_ms": 30.0, "max_ms": 150.0}
    now = 0.0
    for _ in range(30):
        now += float(rng.integers(0, 60))
        ids = rng.integers(-1500, 1500, size=int(rng.integers(0, 400))).astype(np.int64)
        assert s.touch_many(ids, now) == ref.touch_many(ids, now)
        for ch in rng.integers(-1500, 1500, size=60).tolist():
            assert s.forget(ch) == ref.forget(ch)
        assert s.due(now).tolist() == ref.due(now).tolist()
    assert_same_state(s, ref, rule)


# -- bad input -----------------------------------------------------------------------------------

BAD_RULES = [
    ({"min_ms": float("nan")}, StreamcoreValueError, "min_ms must be finite"),
    ({"max_ms": float("inf")}, StreamcoreValueError, "max_ms must be finite"),
    ({"min_ms": 0.0}, StreamcoreValueError, "0 < min_ms <= max_ms"),
    ({"min_ms": -5.0}, StreamcoreValueError, "0 < min_ms <= max_ms"),
    ({"min_ms": 200.0, "max_ms": 100.0}, StreamcoreValueError, "0 < min_ms <= max_ms"),
    ({"quiet_rate": 0.0}, StreamcoreValueError, "quiet_rate < busy_rate"),
    ({"quiet_rate": 100.0, "busy_rate": 100.0}, StreamcoreValueError, "quiet_rate < busy_rate"),
    ({"busy_rate": float("nan")}, StreamcoreValueError, "busy_rate must be finite"),
    ({"alpha": 0.0}, StreamcoreValueError, "0 < alpha < 1"),
    ({"alpha": 1.0}, StreamcoreValueError, "0 < alpha < 1"),
    ({"alpha": 5e-324}, StreamcoreValueError, "alpha is too small"),
    ({"min_ms": 10**400}, StreamcoreValueError, "min_ms must be finite"),
    ({"min_ms": "30"}, StreamcoreTypeError, "min_ms must be a real number"),
    ({"max_ms": None}, StreamcoreTypeError, "max_ms must be a real number"),
    ({"alpha": True}, StreamcoreTypeError, "alpha must be a real number"),
]


@pytest.mark.parametrize("cls", SCHEDULERS + WINDOWS)
@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_RULES)
def test_bad_rule(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("a", 0.0), StreamcoreTypeError, "channel must be an integer"),
        ((1.0, 0.0), StreamcoreTypeError, "channel must be an integer"),
        ((True, 0.0), StreamcoreTypeError, "channel must be an integer"),
        ((None, 0.0), StreamcoreTypeError, "channel must be an integer"),
        ((2**63, 0.0), StreamcoreValueError, "channel must fit in int64"),
        ((-(2**63) - 1, 0.0), StreamcoreValueError, "channel must fit in int64"),
        ((1, float("nan")), StreamcoreValueError, "now_ms must be finite"),
        ((1, float("inf")), StreamcoreValueError, "now_ms must be finite"),
        ((1, "0"), StreamcoreTypeError, "now_ms must be a real number"),
        ((1, None), StreamcoreTypeError, "now_ms must be a real number"),
        ((1, 0.0, -1), StreamcoreValueError, "events must be >= 0"),
        ((1, 0.0, 1.0), StreamcoreTypeError, "events must be an integer"),
        ((1, 0.0, 2**64), StreamcoreValueError, "events must fit in int64"),
    ],
)
def test_bad_touch(cls, args, error, message):
    s = cls()
    with pytest.raises(error, match=message):
        s.touch(*args)
    assert len(s.channels) == 0


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_integer_likes_are_accepted(cls):
    s = cls()
    assert s.touch(np.int64(5), np.float32(1.0), events=np.int32(2)) is True
    assert s.window_ms(np.uint8(5)) == 30.0
    assert s.touch(5, 2) is False  # int time


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "channels",
    [
        [1, 2, 3],
        np.array([1.0, 2.0]),
        np.array([1, 2], dtype=np.int32),
        np.array([1, 2], dtype=np.uint64),
        np.arange(10, dtype=np.int64)[::2],
        np.zeros((2, 2), dtype=np.int64),
        b"\x00" * 8,
        None,
    ],
    ids=["list", "float64", "int32", "uint64", "strided", "2d", "bytes", "None"],
)
def test_bad_touch_many(cls, channels):
    s = cls()
    with pytest.raises(StreamcoreTypeError, match="channels must be a C-contiguous int64 buffer"):
        s.touch_many(channels, 0.0)
    assert len(s.channels) == 0


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_clock_must_not_go_backwards(cls):
    s = cls()
    s.touch(1, 100.0)
    for call in (
        lambda: s.touch(1, 99.0),
        lambda: s.touch_many(np.array([2], dtype=np.int64), 50.0),
        lambda: s.due(99.999),
    ):
        with pytest.raises(StreamcoreValueError, match="now_ms went backwards"):
            call()
    assert s.channels.tolist() == [1]
    assert s.due(100.0).tolist() == []  # equal time is fine
    with pytest.raises(StreamcoreValueError, match="now_ms must be finite"):
        s.due(float("nan"))
    with pytest.raises(StreamcoreTypeError, match="now_ms must be a real number"):
        s.due("later")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_unknown_channel_queries(cls):
    s = cls()
    with pytest.raises(KeyError):
        s.window_ms(1)
    with pytest.raises(KeyError):
        s.rate(1)
    assert s.is_active(1) is False
    assert s.forget(1) is False
    with pytest.raises(StreamcoreTypeError, match="channel must be an integer"):
        s.is_active("1")
    with pytest.raises(StreamcoreTypeError, match="channel must be an integer"):
        s.forget(1.5)


@pytest.mark.parametrize("cls", WINDOWS)
@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((1, 0.0), StreamcoreValueError, "elapsed_ms must be > 0"),
        ((1, -3.0), StreamcoreValueError, "elapsed_ms must be > 0"),
        ((1, float("nan")), StreamcoreValueError, "elapsed_ms must be finite"),
        ((1, 30.0, -1.0), StreamcoreValueError, "idle_ms must be >= 0"),
        ((1, 30.0, float("inf")), StreamcoreValueError, "idle_ms must be finite"),
        ((-1, 30.0), StreamcoreValueError, "events must be >= 0"),
        ((1.5, 30.0), StreamcoreTypeError, "events must be an integer"),
        ((1, "30"), StreamcoreTypeError, "elapsed_ms must be a real number"),
    ],
)
def test_bad_observe(cls, args, error, message):
    w = cls()
    with pytest.raises(error, match=message):
        w.observe(*args)
    assert w.rate == 0.0
    with pytest.raises(StreamcoreValueError, match="idle_ms must be >= 0"):
        w.wake(-1.0)
    with pytest.raises(StreamcoreTypeError, match="idle_ms must be a real number"):
        w.wake(None)
