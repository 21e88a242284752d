"""The Redis broker against real redis-servers: one sequence per org for every instance, routing
by org, gaps filled from the history, lost history and lost events told, never silent.

Two brokers in one process stand for two instances; their sinks record what the hub would get.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from processes import PrivateRedis
from waiting import eventually_async

from streamcore_server.events import Event
from streamcore_server.realtime.broker import Batch
from streamcore_server.realtime.redis_broker import RedisBroker

pytestmark = pytest.mark.redis


class Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[int, str, Batch]] = []
        self.resets: list[tuple[int, str, int, str]] = []

    def on_batch(self, org_id: int, epoch: str, batch: Batch) -> None:
        self.batches.append((org_id, epoch, batch))

    def on_reset(self, org_id: int, epoch: str, position: int, reason: str) -> None:
        self.resets.append((org_id, epoch, position, reason))

    def facts(self, org_id: int) -> list[tuple[int, bytes]]:
        """(position, payload) of every event delivered for the org, in delivery order."""
        return [
            (pos, e.payload)
            for org, _, b in self.batches
            if org == org_id
            for pos, e in enumerate(b.events, b.first)
        ]


def fact(org: int, n: int) -> Event:
    return Event(org, None, False, b'{"n":%d}' % n)


class Instances:
    def __init__(self, url: str, **kw: Any) -> None:
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.kw = {"history_events": 1000, "history_age_s": 60, "unsubscribe_grace_s": 0.2} | kw
        self.started: list[RedisBroker] = []

    async def new(self) -> tuple[RedisBroker, Sink]:
        sink = Sink()
        broker = RedisBroker(self.url, self.prefix, sink, **self.kw)
        await broker.start()
        self.started.append(broker)
        return broker, sink

    async def stop(self) -> None:
        for broker in self.started:
            await broker.stop()


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[Instances]:
    instances = Instances(redis_url)
    yield instances
    await instances.stop()


@pytest.fixture
def private_redis() -> Any:
    server = PrivateRedis()
    yield server
    server.stop()


@pytest.fixture
async def private(private_redis: PrivateRedis) -> AsyncIterator[Instances]:
    """Instances on a redis-server of the test's own, which the test may stop, flush or hang."""
    instances = Instances(private_redis.url)
    yield instances
    await instances.stop()


async def test_two_instances_see_one_sequence_with_the_same_positions(shared: Instances) -> None:
    a, on_a = await shared.new()
    b, on_b = await shared.new()
    pa, pb = await a.join(7), await b.join(7)
    assert pa.epoch == pb.epoch and pa.top == pb.top == 0
    await a.publish_now([fact(7, 0), fact(7, 1)])
    await b.publish_now([fact(7, 2)])
    want = [(1, b'{"n":0}'), (2, b'{"n":1}'), (3, b'{"n":2}')]
    await eventually_async(lambda: _equal(on_a.facts(7), want), "instance a's batches")
    await eventually_async(lambda: _equal(on_b.facts(7), want), "instance b's batches")
    assert {epoch for _, epoch, _ in on_a.batches + on_b.batches} == {pa.epoch}
    history = await b.history(7, 1)
    assert history.epoch == pa.epoch and history.top == 3 and history.covers(1)
    assert [p for batch in history.batches for p in range(batch.first, batch.last + 1)] == [1, 2, 3]


async def test_an_instance_receives_only_the_orgs_it_has_subscribers_for(shared: Instances) -> None:
    a, _ = await shared.new()
    b, on_b = await shared.new()
    await b.join(1)
    await a.publish_now([fact(org, org) for org in range(1, 51)])
    await eventually_async(lambda: _equal(len(on_b.facts(1)), 1), "org 1's event")
    await a.publish_now([fact(1, 99)])
    await eventually_async(lambda: _equal(len(on_b.facts(1)), 2), "org 1's second event")
    assert {org for org, _, _ in on_b.batches} == {1}
    assert b.orgs_subscribed == 1
    b.leave(1)  # the last subscriber left: unsubscribed after the grace period
    await eventually_async(lambda: _equal(b.orgs_subscribed, 0), "the grace period to pass")
    await b.join(3)  # a marker org: its event comes after org 1's on the same connection
    await a.publish_now([fact(1, 100)])
    await a.publish_now([fact(3, 0)])
    await eventually_async(lambda: _equal(len(on_b.facts(3)), 1), "the marker org's event")
    history = await a.history(1, 0)
    assert history.top == 3  # published, and b, unsubscribed, took none of it
    assert len(on_b.facts(1)) == 2


async def test_the_history_is_trimmed_by_position(shared: Instances) -> None:
    shared.kw["history_events"] = 10
    a, _ = await shared.new()
    for n in range(30):
        await a.publish_now([fact(3, n)])
    history = await a.history(3, 0)
    assert history.top == 30 and not history.covers(0)
    assert history.covers(29) and history.batches[-1].last == 30
    assert history.batches[0].first <= 21  # at least the newest ten are kept


async def test_a_subscription_that_breaks_is_caught_up_from_the_history(
    private: Instances, private_redis: PrivateRedis
) -> None:
    a, _ = await private.new()
    b, on_b = await private.new()
    await b.join(5)
    await a.publish_now([fact(5, 0)])
    await eventually_async(lambda: _equal(len(on_b.facts(5)), 1), "the first event")
    client = private_redis.client()
    client.client_kill_filter(_type="pubsub")  # b's subscription drops; Redis keeps all
    await a.publish_now([fact(5, 1), fact(5, 2)])  # published while b is away
    client.close()
    want = [(1, b'{"n":0}'), (2, b'{"n":1}'), (3, b'{"n":2}')]
    await eventually_async(lambda: _equal(on_b.facts(5), want), "b to catch up")
    assert on_b.resets == [] and b.interruptions == 1 and b.gaps_filled >= 1


async def test_a_flushed_redis_ends_in_history_lost_then_a_new_sequence(
    private: Instances, private_redis: PrivateRedis
) -> None:
    a, _ = await private.new()
    b, on_b = await private.new()
    first = await b.join(6)
    await a.publish_now([fact(6, 0)])
    await eventually_async(lambda: _equal(len(on_b.facts(6)), 1), "the first event")
    client = private_redis.client()
    client.flushall()
    client.close()
    await a.publish_now([fact(6, 1)])
    await eventually_async(lambda: _equal(len(on_b.resets), 1), "the reset")
    ((org, epoch, position, reason),) = on_b.resets
    assert (org, position, reason) == (6, 0, "history_lost") and epoch != first.epoch
    await eventually_async(lambda: _equal(len(on_b.facts(6)), 2), "the new sequence")
    assert on_b.facts(6)[-1] == (1, b'{"n":1}')


async def test_events_of_writes_wait_for_redis_and_are_delivered_when_it_is_back(
    private: Instances, private_redis: PrivateRedis
) -> None:
    private.kw |= {"retry_s": 30.0}
    a, on_a = await private.new()
    await a.join(8)
    private_redis.stop()
    for n in range(5):
        a.publish(fact(8, n))  # the EventBus sink of committed writes: never raises
    await eventually_async(lambda: _equal(a.publish_retries >= 1, True), "a failed try")
    assert a.outbox_size == 5
    private_redis.start()
    await eventually_async(lambda: _equal(a.outbox_size, 0), "the queued events to go", 20)
    assert a.events_lost == 0
    history = await a.history(8, 0)  # all of them reached the shared history, in order
    assert [e.payload for b in history.batches for e in b.events] == [
        b'{"n":%d}' % n for n in range(5)
    ]
    # The restarted Redis is empty: a new sequence, and this instance says so. Each event
    # is then delivered, or lies before the reset's position (what a reload reads).
    await eventually_async(lambda: _equal(len(on_a.resets), 1), "the reset", 20)
    ((_, _, position, reason),) = on_a.resets
    assert reason == "history_lost"
    await eventually_async(
        lambda: _equal([p for p, _ in on_a.facts(8)], list(range(position + 1, 6))),
        "the events after the reset",
    )


async def test_events_that_cannot_wait_are_counted_and_every_instance_is_told(
    private: Instances, private_redis: PrivateRedis
) -> None:
    private.kw |= {"retry_s": 0.3}
    a, on_a = await private.new()
    b, on_b = await private.new()
    await a.join(9)
    await b.join(9)
    private_redis.hang()  # accepts, never answers: a stalled Redis
    a.publish(fact(9, 0))
    await eventually_async(lambda: _equal(a.events_lost, 1), "the event to expire", 20)
    assert [r[3] for r in on_a.resets] == ["events_lost"]  # this instance: at once
    private_redis.resume()
    # The others learn it from the marker in the org's history, when Redis answers again.
    await eventually_async(
        lambda: _equal("events_lost" in [r[3] for r in on_b.resets], True), "b's reset", 20
    )
    history = await b.history(9, 0)
    assert any(batch.lost == 1 for batch in history.batches)


async def _equal(got: Any, want: Any) -> bool:
    return bool(got == want)
