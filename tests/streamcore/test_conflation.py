"""Conflator and IntConflator against the pure-Python reference, and every bad input."""

import json
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcore
from streamcore import (
    Conflator,
    IntConflator,
    StreamcoreError,
    StreamcoreTypeError,
    StreamcoreValueError,
    _conflation,
)
from streamcore.reference.conflation import ReferenceConflator, reference_int_conflate


def test_compiled_extension_is_loaded():
    assert _conflation.__file__.endswith((".so", ".pyd")), _conflation.__file__
    assert streamcore.Conflator is _conflation.Conflator
    assert streamcore.IntConflator is _conflation.IntConflator
    # A compiled type has no __dict__-backed Python methods.
    assert type(Conflator.push).__name__ in ("method_descriptor", "cython_function_or_method")


# ----------------------------------------------------------------------------------------------
# Conflator against the reference

keys = st.one_of(
    st.none(),
    st.sampled_from(["a", "b", "7", "property:7:balance", ""]),
    # Every str kind (1, 2 and 4 bytes a character), each event a fresh but equal str object.
    st.sampled_from(["é:1", "日本:1", "😀:1", "property:8:balance"]).map(lambda s: (s + "!")[:-1]),
    # Ints beyond int64 take the dict path, the others the C table.
    st.sampled_from([0, 7, -1, 2**63 - 1, -(2**63), 2**64, 2**70]),
)
payloads = st.binary(max_size=12)
# ("push", key, payload, conflatable) or ("drain",)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), keys, payloads, st.booleans()),
        st.just(("drain",)),
    ),
    max_size=80,
)


def _replay(ops_list, mode="latest"):
    subject, reference = Conflator(mode), ReferenceConflator(mode)
    drains = []
    for op in ops_list:
        if op[0] == "push":
            _, key, payload, conflatable = op
            subject.push(key, payload, conflatable)
            reference.push(key, payload, conflatable)
        else:
            got, want = subject.drain(), reference.drain()
            assert got == want
            drains.append(got)
        assert len(subject) == len(reference)
        assert subject.pending_bytes == reference.pending_bytes
    assert subject.drain() == reference.drain()
    assert (subject.events_in, subject.events_out) == (reference.events_in, reference.events_out)
    assert subject.conflation_ratio == reference.conflation_ratio
    return drains


@settings(max_examples=300, deadline=None)
@given(ops)
def test_conflator_equals_reference(ops_list):
    _replay(ops_list)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(keys, payloads, st.booleans()), max_size=60), st.booleans())
def test_push_many_equals_push(events, as_tuple):
    ks, ps, flags = [e[0] for e in events], [e[1] for e in events], [e[2] for e in events]
    one, many = Conflator(), Conflator()
    conflatable = all(flags)
    for k, p in zip(ks, ps, strict=True):
        one.push(k, p, conflatable)
    many.push_many(tuple(ks) if as_tuple else ks, tuple(ps) if as_tuple else ps, conflatable)
    assert many.drain() == one.drain()
    assert many.events_in == one.events_in == len(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), payloads), max_size=60))
def test_push_int_many_equals_reference(events):
    ks = np.array([e[0] for e in events], dtype=np.int64)
    ps = [e[1] for e in events]
    subject, reference = Conflator(), ReferenceConflator()
    subject.push_int_many(ks, ps)
    for k, p in events:
        reference.push(k, p)
    assert subject.pending_bytes == reference.pending_bytes
    assert subject.drain() == reference.drain()
    assert subject.events_in == reference.events_in


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(["a", 1])), st.booleans()), max_size=60)
)
def test_unkeyed_and_non_conflatable_events_are_delivered_once_in_order(events):
    c = Conflator()
    facts = []
    for i, (key, conflatable) in enumerate(events):
        payload = f"{i}".encode()
        c.push(key, payload, conflatable)
        if key is None or not conflatable:
            facts.append(payload)
    out = c.drain()
    assert [p for p in out if p in facts] == facts
    assert len(out) == len(set(out))


def test_hundred_updates_to_one_key_give_one_event_with_the_latest_payload():
    c = Conflator()
    for i in range(100):
        c.push("property:7:balance", f'{{"v":{i}}}'.encode())
    assert len(c) == 1
    assert c.drain() == [b'{"v":99}']
    assert (c.events_in, c.events_out, c.conflation_ratio) == (100, 1, 0.01)


def test_key_keeps_its_first_seen_slot_and_str_and_int_keys_differ():
    c = Conflator()
    c.push("7", b"s1")
    c.push(7, b"i1")
    c.push(None, b"fact")
    c.push(7, b"created", conflatable=False)
    c.push("7", b"s2")
    c.push(7, b"i2")
    assert c.drain() == [b"s2", b"i2", b"fact", b"created"]


class _HostileStr(str):
    """A str subclass whose comparisons try to drain the conflator in the middle of a push."""

    victim = None

    def __hash__(self):
        if _HostileStr.victim is not None:
            _HostileStr.victim.drain()
        return str.__hash__(self)

    def __eq__(self, other):
        if _HostileStr.victim is not None:
            _HostileStr.victim.drain()
        return str.__eq__(self, other)


class _HostileInt(int):
    __hash__ = _HostileStr.__hash__
    __eq__ = _HostileStr.__eq__


def test_key_subclasses_are_keyed_by_value_and_run_no_user_code():
    c = Conflator()
    _HostileStr.victim = c
    try:
        c.push("k", b"1")
        c.push(_HostileStr("k"), b"2")
        c.push(2**70, b"3")
        c.push(_HostileInt(2**70), b"4")
        c.push(_HostileInt(7), b"5")
        c.push(7, b"6")
    finally:
        _HostileStr.victim = None
    assert c.drain() == [b"2", b"4", b"6"]
    assert c.events_in == 6


def test_non_conflatable_event_neither_replaces_nor_is_replaced():
    c = Conflator()
    c.push("k", b"first", conflatable=False)
    c.push("k", b"state1")
    c.push("k", b"second", conflatable=False)
    c.push("k", b"state2")
    assert c.drain() == [b"first", b"state2", b"second"]


def test_counters_pending_and_drain_reset():
    c = Conflator()
    assert (len(c), c.pending_bytes, c.events_in, c.events_out) == (0, 0, 0, 0)
    assert c.conflation_ratio == 1.0
    c.push("a", b"12345")
    c.push("a", b"12")
    c.push(None, b"123")
    assert (len(c), c.pending_bytes) == (2, 5)
    assert c.drain() == [b"12", b"123"]
    assert (len(c), c.pending_bytes, c.events_in, c.events_out) == (0, 0, 3, 2)
    assert c.conflation_ratio == pytest.approx(2 / 3)
    c.push("a", b"x")  # a new window: "a" starts a new slot
    assert c.drain() == [b"x"]
    assert c.drain() == []
    assert (c.events_in, c.events_out) == (4, 3)


def test_int_table_grows_across_windows():
    c = Conflator()
    for window in range(3):
        for i in range(5000):
            c.push(i * 1_000_003, b"%d" % (i + window))
        for i in range(5000):
            c.push(i * 1_000_003, b"%d" % (i + window + 1))
        assert c.drain() == [b"%d" % (i + window + 1) for i in range(5000)]


def test_str_table_grows_across_windows_and_keeps_first_seen_order():
    c = Conflator()
    for window in range(3):
        names = [f"property:{i * 7919 % 6000}:balance" for i in range(6000)]
        for i, name in enumerate(names):
            c.push(name, b"%d" % (i + window))
        for i, name in enumerate(names):
            c.push(f"{name}", b"%d" % (i + window + 1))  # an equal str, another object
        assert len(c) == 6000
        assert c.drain() == [b"%d" % (i + window + 1) for i in range(6000)]


def test_window_owns_its_references_and_releases_them():
    payload, key = b"payload-" + b"x" * 40, "key-" + "y" * 40
    base = sys.getrefcount(payload), sys.getrefcount(key)
    c = Conflator()
    c.push(key, payload)
    c.push(key, payload)
    c.push(None, payload)
    c.push_many([key, key], [payload, payload])
    assert sys.getrefcount(payload) == base[0] + 2  # two slots
    out = c.drain()
    assert sys.getrefcount(key) == base[1]  # the window forgot its keys
    del out
    c.push(key, payload)
    del c  # a window dropped undrained
    assert (sys.getrefcount(payload), sys.getrefcount(key)) == base


def test_push_takes_positional_and_keyword_arguments_alike():
    c = Conflator()
    c.push("a", b"1")
    c.push("a", b"2", True)
    c.push("a", b"fact", 0)
    c.push(key="b", payload=b"3")
    c.push("b", payload=b"4", conflatable=True)
    c.push(None, b"5", conflatable=False)
    assert c.drain() == [b"2", b"fact", b"4", b"5"]
    with pytest.raises(TypeError):
        c.push("a")
    with pytest.raises(TypeError):
        c.push("a", b"x", True, 1)
    with pytest.raises(TypeError):
        c.push("a", b"x", bogus=1)
    with pytest.raises(TypeError):
        c.push("a", b"x", True, conflatable=True)
    assert (len(c), c.events_in) == (0, 6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", 1, None]), payloads), max_size=40))
def test_push_many_in_merge_mode_equals_push(events):
    ks = [k for k, _ in events]
    ps = [b'{"v":%d}' % len(p) for _, p in events]
    one, many = Conflator("merge"), Conflator("merge")
    for k, p in zip(ks, ps, strict=True):
        one.push(k, p)
    many.push_many(ks, ps)
    assert many.drain() == one.drain()


# ----------------------------------------------------------------------------------------------
# Merge mode


def test_merge_mode_merges_fields_shallowly_later_wins():
    c = Conflator("merge")
    assert c.mode == "merge"
    c.push("p:1", b'{"a":1,"b":{"x":1}}')
    c.push(None, b'{"a":0}')
    c.push("p:1", b'{"b":{"y":2},"c":"\xc3\xa9"}')
    c.push("p:1", b'{"a":3}')
    out = c.drain()
    assert out == ['{"a":3,"b":{"y":2},"c":"é"}'.encode(), b'{"a":0}']
    assert json.loads(out[0]) == {"a": 3, "b": {"y": 2}, "c": "é"}


def test_merge_mode_leaves_a_lone_payload_untouched():
    c = Conflator("merge")
    c.push("k", b'{ "a" : 1 }')  # not re-encoded: no collision
    c.push("k", b"[1]", conflatable=False)  # never merged either
    assert c.drain() == [b'{ "a" : 1 }', b"[1]"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("push"),
                st.sampled_from(["a", 1, None]),
                st.dictionaries(st.sampled_from("xyz"), st.integers(-3, 3), max_size=3).map(
                    lambda d: json.dumps(d).encode()
                ),
                st.booleans(),
            ),
            st.just(("drain",)),
        ),
        max_size=40,
    )
)
def test_merge_mode_equals_reference(ops_list):
    _replay(ops_list, mode="merge")


@pytest.mark.parametrize("bad", [b"[1,2]", b"3", b'"s"', b"null", b"{not json"])
@pytest.mark.parametrize("key", ["property:7", 7])
def test_merge_mode_rejects_a_non_object_on_collision_and_changes_nothing(bad, key):
    c = Conflator("merge")
    c.push(key, b'{"a":1}')
    with pytest.raises(StreamcoreValueError, match=repr(key)):
        c.push(key, bad)
    assert (c.events_in, len(c), c.pending_bytes) == (1, 1, 7)
    assert c.drain() == [b'{"a":1}']


def test_merge_error_in_push_int_many_keeps_the_events_before_it():
    c = Conflator("merge")
    with pytest.raises(StreamcoreValueError, match="key 5"):
        c.push_int_many(np.array([5, 6, 5], dtype=np.int64), [b'{"a":1}', b'{"b":2}', b"[]"])
    assert c.events_in == 2
    assert c.drain() == [b'{"a":1}', b'{"b":2}']


# ----------------------------------------------------------------------------------------------
# IntConflator


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 40), max_size=400),
    st.integers(0, 64),
    st.integers(1, 4),
)
def test_int_conflator_equals_reference(key_list, capacity_hint, windows):
    c = IntConflator(capacity_hint)
    rng = np.random.default_rng(len(key_list))
    pushed = 0
    for _ in range(windows):  # reuse after drain, with the table grown past the hint
        keys = np.array(key_list, dtype=np.int64)
        refs = rng.integers(-(2**63), 2**63 - 1, size=len(keys), dtype=np.int64)
        c.push_many(keys, refs)
        pushed += len(keys)
        want_keys, want_refs = reference_int_conflate(keys.tolist(), refs.tolist())
        assert len(c) == len(want_keys)
        got_keys, got_refs = c.drain()
        assert got_keys.dtype == got_refs.dtype == np.int64
        assert got_keys.tolist() == want_keys
        assert got_refs.tolist() == want_refs
        assert len(c) == 0
    assert c.events_in == pushed
    assert c.events_out == windows * len(set(key_list))
    assert c.conflation_ratio == (c.events_out / pushed if pushed else 1.0)


def test_int_conflator_heavy_collisions_and_growth():
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 10_000, size=200_000, dtype=np.int64) * 4096  # strided ids
    refs = np.arange(keys.size, dtype=np.int64)
    c = IntConflator(capacity_hint=4)
    c.push_many(keys[:100_000], refs[:100_000])
    c.push_many(keys[100_000:], refs[100_000:])
    want_keys, want_refs = reference_int_conflate(keys.tolist(), refs.tolist())
    got_keys, got_refs = c.drain()
    assert got_keys.tolist() == want_keys
    assert got_refs.tolist() == want_refs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-50, 50), max_size=300), min_size=1, max_size=6))
def test_int_conflator_windows_with_different_keys(windows):
    """Emptying a window must forget its keys without disturbing the next window's."""
    c = IntConflator(0)
    for n, key_list in enumerate(windows):
        refs = list(range(n * 1000, n * 1000 + len(key_list)))
        if n % 2:
            for k, r in zip(key_list, refs, strict=True):
                c.push(k, r)
        else:
            c.push_many(np.array(key_list, dtype=np.int64), np.array(refs, dtype=np.int64))
        got = c.drain()
        assert (got[0].tolist(), got[1].tolist()) == reference_int_conflate(key_list, refs)


def test_int_conflator_push_matches_push_many():
    one, many = IntConflator(1), IntConflator(1)
    keys = [3, 1, 3, 2**63 - 1, -(2**63), 1, 0]
    for i, k in enumerate(keys):
        one.push(k, i)
    many.push_many(np.array(keys, dtype=np.int64), np.arange(len(keys), dtype=np.int64))
    a, b = one.drain(), many.drain()
    assert a[0].tolist() == b[0].tolist() == [3, 1, 2**63 - 1, -(2**63), 0]
    assert a[1].tolist() == b[1].tolist() == [2, 5, 3, 4, 6]


def test_int_conflator_clear_and_empty_drain():
    c = IntConflator()
    assert c.conflation_ratio == 1.0
    keys, refs = c.drain()
    assert keys.shape == refs.shape == (0,)
    c.push_many(np.array([1, 2, 1], dtype=np.int64), np.array([1, 2, 3], dtype=np.int64))
    c.push_many(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    c.clear()
    assert len(c) == 0
    assert (c.events_in, c.events_out) == (3, 0)
    c.push(1, 9)
    assert [a.tolist() for a in c.drain()] == [[1], [9]]


def test_int_conflator_accepts_read_only_buffers():
    keys = np.array([1, 2, 1], dtype=np.int64)
    keys.setflags(write=False)
    c = IntConflator()
    c.push_many(keys, memoryview(np.array([7, 8, 9], dtype=np.int64)))
    assert [a.tolist() for a in c.drain()] == [[1, 2], [9, 8]]


def test_int_conflator_refuses_other_threads_while_a_batch_runs_without_the_gil():
    n = 3_000_000
    keys = np.arange(n, dtype=np.int64) % 200_000
    refs = np.arange(n, dtype=np.int64)
    c = IntConflator()
    worker = threading.Thread(target=c.push_many, args=(keys, refs))
    pushed, drained = 0, 0
    worker.start()
    while worker.is_alive():
        try:
            c.push(-1, 1)
            pushed += 1
            drained += len(c.drain()[0])
        except StreamcoreError as exc:
            assert "in use by another thread" in str(exc)
    worker.join()
    drained += len(c.drain()[0])
    # Whatever the interleaving, the map stayed whole: every accepted event counted, none invented.
    assert c.events_in == n + pushed
    assert c.events_out == drained
    assert 200_000 <= drained <= 200_000 + 2 * pushed


# ----------------------------------------------------------------------------------------------
# Bad input: every one raises, names the problem and leaves the window as it was


@pytest.mark.parametrize("payload", ["text", bytearray(b"x"), memoryview(b"x"), None, 1])
def test_payload_must_be_bytes(payload):
    c = Conflator()
    with pytest.raises(StreamcoreTypeError, match="payload must be bytes"):
        c.push("k", payload)
    with pytest.raises(StreamcoreTypeError, match="payload must be bytes"):
        c.push_many(["a", "b"], [b"ok", payload])
    with pytest.raises(StreamcoreTypeError, match="payload must be bytes"):
        c.push_int_many(np.array([1, 2], dtype=np.int64), [b"ok", payload])
    assert (len(c), c.events_in) == (0, 0)


@pytest.mark.parametrize("key", [1.0, b"k", True, False, ("a",), np.int64(1)])
def test_key_must_be_str_int_or_none(key):
    c = Conflator()
    with pytest.raises(StreamcoreTypeError, match="key must be str, int or None"):
        c.push(key, b"x")
    with pytest.raises(StreamcoreTypeError, match="key must be str, int or None"):
        c.push(key, b"x", conflatable=False)
    with pytest.raises(StreamcoreTypeError, match="key must be str, int or None"):
        c.push_many(["a", key], [b"x", b"y"])
    assert (len(c), c.events_in) == (0, 0)


def test_bool_key_does_not_collide_with_int():
    c = Conflator()
    c.push(1, b"one")
    with pytest.raises(StreamcoreTypeError, match="bool"):
        c.push(True, b"true")
    assert c.drain() == [b"one"]


def test_mismatched_lengths():
    with pytest.raises(StreamcoreValueError, match="differ in length: 2 != 1"):
        Conflator().push_many(["a", "b"], [b"x"])
    with pytest.raises(StreamcoreValueError, match="differ in length: 2 != 3"):
        Conflator().push_int_many(np.array([1, 2], dtype=np.int64), [b"x"] * 3)
    with pytest.raises(StreamcoreValueError, match="differ in length: 3 != 2"):
        IntConflator().push_many(np.zeros(3, dtype=np.int64), np.zeros(2, dtype=np.int64))


@pytest.mark.parametrize("seq", ["ab", b"ab", 3, None, {"a", "b"}])
def test_push_many_wants_sequences(seq):
    with pytest.raises(StreamcoreTypeError, match="must be a sequence"):
        Conflator().push_many(seq, [b"x", b"y"])


_BAD_BUFFERS = [
    # (value, error, message): what happens for each wrong array
    (np.zeros(4, dtype=np.int32), StreamcoreTypeError, "dtype int64"),
    (np.zeros(4, dtype=np.float64), StreamcoreTypeError, "dtype int64"),
    (np.zeros(4, dtype=np.uint64), StreamcoreTypeError, "dtype int64"),
    (np.zeros(8, dtype=np.int64)[::2], StreamcoreValueError, "C-contiguous"),
    (np.zeros((2, 2), dtype=np.int64), StreamcoreValueError, "one-dimensional"),
    ([1, 2, 3, 4], StreamcoreTypeError, "int64 buffer"),
    (None, StreamcoreTypeError, "not None"),
    (b"12345678", StreamcoreTypeError, "dtype int64"),
]


@pytest.mark.parametrize(("bad", "error", "message"), _BAD_BUFFERS)
def test_int64_buffers_are_checked(bad, error, message):
    good = np.zeros(4, dtype=np.int64)
    ic = IntConflator()
    with pytest.raises(error, match=message):
        ic.push_many(bad, good)
    with pytest.raises(error, match=message):
        ic.push_many(good, bad)
    c = Conflator()
    with pytest.raises(error, match=message):
        c.push_int_many(bad, [b"x"] * 4)
    assert (len(ic), ic.events_in, len(c), c.events_in) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("key", "ref", "error", "message"),
    [
        (1.0, 1, StreamcoreTypeError, "key must be an int"),
        (True, 1, StreamcoreTypeError, "key must be an int"),
        ("1", 1, StreamcoreTypeError, "key must be an int"),
        (1, None, StreamcoreTypeError, "ref must be an int"),
        (2**63, 1, StreamcoreValueError, "outside the int64 range"),
        (1, -(2**63) - 1, StreamcoreValueError, "outside the int64 range"),
    ],
)
def test_int_conflator_push_checks_arguments(key, ref, error, message):
    c = IntConflator()
    with pytest.raises(error, match=message):
        c.push(key, ref)
    assert (len(c), c.events_in) == (0, 0)


@pytest.mark.parametrize(
    ("hint", "error", "message"),
    [
        (-1, StreamcoreValueError, ">= 0"),
        (2**40, StreamcoreValueError, "limit"),
        (1.5, StreamcoreTypeError, "int"),
    ],
)
def test_int_conflator_capacity_hint_is_checked(hint, error, message):
    with pytest.raises(error, match=message):
        IntConflator(hint)


@pytest.mark.parametrize(
    ("mode", "error"),
    [("LATEST", StreamcoreValueError), ("", StreamcoreValueError), (None, StreamcoreTypeError)],
)
def test_bad_mode(mode, error):
    with pytest.raises(error, match="mode"):
        Conflator(mode)


def test_default_mode_is_latest():
    assert Conflator().mode == "latest"
    assert ReferenceConflator().mode == "latest"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(keys, payloads.filter(bool), st.booleans()), max_size=60))
def test_drain_keyed_names_each_slots_key_and_none_for_what_was_kept_as_it_came(events):
    c = Conflator()
    slots: list[list] = []  # [key or None, payload], in slot order
    index: dict = {}
    for key, payload, conflatable in events:
        c.push(key, payload, conflatable)
        if key is None or not conflatable:
            slots.append([None, payload])
            continue
        at = index.get((type(key), key))
        if at is None:
            index[(type(key), key)] = len(slots)
            slots.append([key, payload])
        else:
            slots[at][1] = payload
    payloads_out, keys_out = c.drain_keyed()
    assert payloads_out == [p for _, p in slots]
    assert keys_out == [k for k, _ in slots]
    assert [type(k) for k in keys_out] == [type(k) for k, _ in slots]
    assert len(c) == 0 and c.drain_keyed() == ([], [])
