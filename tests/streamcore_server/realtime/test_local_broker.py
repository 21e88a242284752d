"""LocalBroker on a running loop: a loop turn's events reach the hub as one batch per org."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamcore_server.events import Event
from streamcore_server.realtime.broker import Batch, LocalBroker


class Sink:
    """Records what the broker delivers; `fail_org` raises for that org's batches."""

    def __init__(self, fail_org: int | None = None) -> None:
        self.batches: list[tuple[int, Batch]] = []
        self.fail_org = fail_org
        self.arrived = asyncio.Event()

    def on_batch(self, org_id: int, epoch: str, batch: Batch) -> None:
        if org_id == self.fail_org:
            raise RuntimeError("sink broke")
        self.batches.append((org_id, batch))
        self.arrived.set()

    def on_reset(self, org_id: int, epoch: str, position: int, reason: str) -> None:
        raise AssertionError("no reset expected")


def event(org_id: int, n: int) -> Event:
    return Event(org_id, f"k{n}", True, b'{"n":%d}' % n)


def payloads(batch: Batch) -> list[bytes]:
    return [e.payload for e in batch.events]


async def started(sink: Sink) -> LocalBroker:
    broker = LocalBroker(sink, history_events=1000, history_age_s=600.0)
    await broker.start()
    return broker


async def test_one_turns_events_arrive_as_one_batch_per_org_in_order() -> None:
    sink = Sink()
    broker = await started(sink)
    for n in range(6):
        broker.publish(event(1 + n % 2, n))
    assert sink.batches == []  # queued until the turn ends
    await asyncio.wait_for(sink.arrived.wait(), 5)
    by_org = {org: batch for org, batch in sink.batches}
    assert len(sink.batches) == 2
    assert (by_org[1].first, payloads(by_org[1])) == (1, [b'{"n":0}', b'{"n":2}', b'{"n":4}'])
    assert (by_org[2].first, payloads(by_org[2])) == (1, [b'{"n":1}', b'{"n":3}', b'{"n":5}'])
    await broker.stop()


async def test_the_next_turn_continues_the_sequence_and_history_keeps_one_entry_a_turn() -> None:
    sink = Sink()
    broker = await started(sink)
    for turn in range(3):
        sink.arrived.clear()
        for n in range(4):
            broker.publish(event(1, turn * 4 + n))
        await asyncio.wait_for(sink.arrived.wait(), 5)
    assert [(b.first, len(b.events)) for _, b in sink.batches] == [(1, 4), (5, 4), (9, 4)]
    history = await broker.history(1, 0)
    assert [(b.first, len(b.events)) for b in history.batches] == [(1, 4), (5, 4), (9, 4)]
    assert history.top == 12
    await broker.stop()


async def test_join_and_history_number_what_is_queued_first() -> None:
    sink = Sink()
    broker = await started(sink)
    broker.publish(event(1, 0))
    broker.publish(event(1, 1))
    position = await broker.join(1)  # a subscriber joining now must not miss those two
    assert position.top == 2
    broker.publish(event(1, 2))
    history = await broker.history(1, 0)
    assert [payloads(b) for b in history.batches] == [[b'{"n":0}', b'{"n":1}'], [b'{"n":2}']]
    await broker.stop()


async def test_publish_many_comes_after_what_was_published_before_it() -> None:
    sink = Sink()
    broker = await started(sink)
    broker.publish(event(1, 0))
    broker.publish_many([event(1, 1), event(1, 2)])
    assert [(b.first, payloads(b)) for _, b in sink.batches] == [
        (1, [b'{"n":0}']),
        (2, [b'{"n":1}', b'{"n":2}']),
    ]
    await broker.stop()


async def test_stop_delivers_what_is_queued_and_then_publish_delivers_at_once() -> None:
    sink = Sink()
    broker = await started(sink)
    broker.publish(event(1, 0))
    await broker.stop()
    assert [b.first for _, b in sink.batches] == [1]
    broker.publish(event(1, 1))
    assert [b.first for _, b in sink.batches] == [1, 2]


async def test_one_orgs_failing_delivery_keeps_the_others_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(fail_org=2)
    broker = await started(sink)
    with caplog.at_level(logging.ERROR, logger="streamcore_server.realtime.broker"):
        for n in range(3):
            broker.publish(event(1 + n, n))
        await asyncio.wait_for(sink.arrived.wait(), 5)
        await broker.stop()
    assert sorted(org for org, _ in sink.batches) == [1, 3]
    assert [r.getMessage() for r in caplog.records] == ["realtime batch failed"]
    assert (caplog.records[0].orgId, caplog.records[0].n) == (2, 1)
