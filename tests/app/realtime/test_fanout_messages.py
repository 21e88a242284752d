"""The fan-out's message format: a batch of one org's events per PUBLISH, decoded exactly."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.events import Event
from app.realtime import fanout

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
        e for group in fanout.by_org(batch).values() for e in fanout.decode(fanout.encode(group))
    ]
    for org in {e.org_id for e in batch}:
        assert [e for e in back if e.org_id == org] == [e for e in batch if e.org_id == org]
    assert len(back) == len(batch)


def test_a_message_with_bytes_beyond_its_events_is_refused() -> None:
    message = fanout.encode([Event(1, None, False, b"{}")]) + b"x"
    with pytest.raises(ValueError, match="1 bytes beyond"):
        fanout.decode(message)
