"""The in-process publisher that the realtime channel will subscribe to."""

from __future__ import annotations

import logging

import orjson
import pytest

from streamcore_server.events import Event, EventBus, fact, state


def test_every_sink_gets_every_event_in_order() -> None:
    bus = EventBus()
    first: list[Event] = []
    second: list[Event] = []
    bus.subscribe(first.append)
    bus.subscribe(second.append)
    events = [fact(1, "expense.created", {"id": n}) for n in range(3)]
    bus.publish(events[0])
    bus.publish_many(events[1:])
    assert first == second == events


def test_a_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("sink down")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    with caplog.at_level(logging.ERROR):
        bus.publish(fact(1, "expense.created", {}))
    assert len(got) == 1
    assert "event sink failed" in caplog.text


def test_unsubscribe() -> None:
    bus = EventBus()
    got: list[Event] = []
    remove = bus.subscribe(got.append)
    remove()
    bus.publish(fact(1, "x", {}))
    assert got == []


def test_envelopes() -> None:
    created = fact(7, "expense.created", {"id": 1})
    assert (created.org_id, created.key, created.conflatable) == (7, None, False)
    assert orjson.loads(created.payload) == {
        "type": "expense.created",
        "orgId": 7,
        "data": {"id": 1},
    }
    totals = state(7, "property.totals", "property:3:totals", {"propertyId": 3})
    assert (totals.key, totals.conflatable) == ("property:3:totals", True)
    assert orjson.loads(totals.payload)["key"] == "property:3:totals"


def test_a_conflatable_event_needs_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        Event(1, None, True, b"{}")
