"""The broker's batch format: one org's events per message, decoded exactly."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcore_server.events import Event
from streamcore_server.realtime.broker import by_org, decode_batch, encode_events, encode_lost

payloads = st.binary(max_size=64).map(lambda b: orjson.dumps(b.hex()))
events = st.builds(
    lambda org, prop, key, payload, version: Event(
        org, key, key is not None, payload, prop, version if key is not None else None
    ),
    st.integers(1, 3),
    st.none() | st.integers(1, 5),
    st.none() | st.sampled_from(["a", "b", "ключ"]),
    payloads,
    st.none() | st.integers(0, 2**40),
)


@given(st.lists(events, max_size=20))
def test_grouped_by_org_every_event_comes_back_in_its_org_order(batch: list[Event]) -> None:
    back = [
        e
        for org, group in by_org(batch).items()
        for e in decode_batch(org, encode_events(group), 1).events
    ]
    for org in {e.org_id for e in batch}:
        assert [e for e in back if e.org_id == org] == [e for e in batch if e.org_id == org]
    assert len(back) == len(batch)


def test_a_message_with_bytes_beyond_its_events_is_refused() -> None:
    message = encode_events([Event(1, None, False, b"{}")]) + b"x"
    with pytest.raises(ValueError, match="1 bytes beyond"):
        decode_batch(1, message, 1)


def test_a_loss_marker_takes_one_position_and_carries_no_event() -> None:
    batch = decode_batch(1, encode_lost(3), 10)
    assert (batch.first, batch.last, batch.lost, batch.events) == (10, 10, 3, [])
    with pytest.raises(ValueError, match="loss marker"):
        decode_batch(1, encode_lost(3) + b"x", 10)
