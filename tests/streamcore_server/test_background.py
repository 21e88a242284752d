"""Background loops stop for certain, even when one cancellation is swallowed on the way."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis.exceptions

from streamcore_server import background, redis_client
from streamcore_server.metrics.publish import Publisher
from streamcore_server.metrics.registry import Snapshot


async def test_a_task_that_swallows_a_cancel_is_stopped_all_the_same() -> None:
    swallowed = 0
    running = asyncio.Event()

    async def retrying() -> None:
        nonlocal swallowed
        running.set()
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # as a retry loop does with a library's timeout error
                raise

    task = asyncio.get_running_loop().create_task(retrying())
    await running.wait()  # a task cancelled before its first step would swallow nothing
    await asyncio.wait_for(background.stop(task), 5)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_never_ends_costs_the_stop_its_timeout_then_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = True
    running = asyncio.Event()

    async def swallows_every_cancel() -> None:
        running.set()
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if stubborn:
                    continue
                raise

    task = asyncio.get_running_loop().create_task(swallows_every_cancel())
    await running.wait()
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(background.stop(task, timeout=0.3), 5)
    assert 0.3 <= asyncio.get_running_loop().time() - started < 3
    assert not task.done()
    assert "did not stop" in caplog.text
    stubborn = False  # the test's own task must end with the test
    await asyncio.wait_for(background.stop(task), 5)
    assert task.cancelled()


async def test_no_task_and_a_failed_one_stop_at_once(caplog: pytest.LogCaptureFixture) -> None:
    await background.stop(None)

    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait({task})  # failed before the stop
    with caplog.at_level(logging.WARNING):
        await background.stop(task)
    assert "failed before it stopped" in caplog.text


@pytest.mark.redis
async def test_the_metrics_publisher_stops_when_redis_turns_its_cancel_into_a_timeout(
    redis_url: str,
) -> None:
    # What CI saw: the publisher's pipeline read was cancelled, the error that came out was
    # redis' TimeoutError, the loop logged it and published on; stop() then waited forever.
    client = redis_client.connect(redis_url, timeout=1.0)
    prefix = f"test-bg-{uuid.uuid4().hex[:8]}"
    publisher = Publisher(client, prefix, 0.01, Snapshot, "me")
    real = publisher.publish
    inside = asyncio.Event()
    turned = 0

    async def publish() -> None:
        nonlocal turned
        await real()
        try:
            inside.set()
            await asyncio.sleep(30)  # the stop's cancel lands here, in "redis"
        except asyncio.CancelledError:
            turned += 1
            if turned > 1:
                raise
            raise redis.exceptions.TimeoutError("Timeout reading") from None

    publisher.publish = publish  # type: ignore[method-assign]
    try:
        await publisher.start()
        await asyncio.wait_for(inside.wait(), 10)
        task = publisher._task
        assert task is not None
        await asyncio.wait_for(publisher.stop(), 10)
        assert task.done() and turned == 1
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
