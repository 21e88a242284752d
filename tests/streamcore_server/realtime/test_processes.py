"""Several served processes: fan-out through Redis, Redis restarts, SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import signal
import uuid
from pathlib import Path

import pytest
from app_support import SEED_EXPENSE
from processes import PrivateRedis, ServeProcess, server_env
from support import (
    assert_sigterm_closes_with_1012,
    frames_until,
    hello,
    next_frame,
    open_ws,
    publish,
)

from streamcore.protocol import FrameKind

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_an_event_published_on_one_instance_reaches_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    env = server_env(
        tmp_path, REDIS_URL=redis_url, REALTIME_REDIS_PREFIX=f"test-rt-{uuid.uuid4().hex[:8]}"
    )
    a = ServeProcess(tmp_path, env, "a")
    b = ServeProcess(tmp_path, env, "b")
    try:
        token = a.token()

        async def scenario() -> None:
            async with await open_ws(a.ws, token) as on_a, await open_ws(b.ws, token) as on_b:
                await hello(on_a)
                await hello(on_b)
                events = [{"type": "t", "conflatable": False, "data": i} for i in range(20)]
                assert (await publish(a.http, token, events[:10])).status_code == 202
                assert (await publish(b.http, token, events[10:])).status_code == 202
                for ws in (on_a, on_b):
                    got = [e["data"] for f in await frames_until(ws, 20) for e in f.events]
                    assert got == list(range(20))

        asyncio.run(scenario())
    finally:
        a.stop()
        b.stop()


def test_a_client_resumes_on_another_instance_with_nothing_lost_or_repeated(
    redis_url: str, tmp_path: Path
) -> None:
    env = server_env(
        tmp_path, REDIS_URL=redis_url, REALTIME_REDIS_PREFIX=f"test-rt-{uuid.uuid4().hex[:8]}"
    )
    a = ServeProcess(tmp_path, env, "a")
    b = ServeProcess(tmp_path, env, "b")
    try:
        token = a.token()

        async def scenario() -> None:
            facts = [{"type": "t", "conflatable": False, "data": i} for i in range(30)]
            async with await open_ws(a.ws, token) as on_a:
                first = await hello(on_a)
                assert (await publish(a.http, token, facts[:10])).status_code == 202
                seen = await frames_until(on_a, 10)
            last_seq = seen[-1].seq
            assert [e["data"] for f in seen for e in f.events] == list(range(10))
            # Away from a: published on b (and a) meanwhile; the client comes back on b.
            assert (await publish(b.http, token, facts[10:20])).status_code == 202
            assert (await publish(a.http, token, facts[20:25])).status_code == 202
            async with await open_ws(b.ws, token, epoch=first["epoch"], last_seq=last_seq) as on_b:
                again = await hello(on_b)
                assert again["epoch"] == first["epoch"]  # one sequence for both instances
                assert (await publish(a.http, token, facts[25:])).status_code == 202
                rest = await frames_until(on_b, 20)
            assert rest[0].first_seq == last_seq + 1
            assert all(y.first_seq == x.seq + 1 for x, y in itertools.pairwise(rest))
            assert [e["data"] for f in rest for e in f.events] == list(range(10, 30))

        asyncio.run(scenario())
    finally:
        a.stop()
        b.stop()


def test_a_redis_restart_ends_in_reset_not_a_silent_gap(tmp_path: Path) -> None:
    redis = PrivateRedis()
    env = server_env(tmp_path, REDIS_URL=redis.url)
    a = ServeProcess(tmp_path, env, "a")
    try:
        token = a.token()

        async def scenario() -> None:
            async with await open_ws(a.ws, token) as ws:
                await hello(ws)
                assert (
                    await publish(a.http, token, [{"type": "t", "key": "k", "data": 1}])
                ).status_code == 202
                assert (await frames_until(ws, 1))[0].seq == 1
                redis.stop(signal.SIGKILL)  # a crash, not a shutdown
                r = await publish(a.http, token, [{"type": "t", "key": "k", "data": 2}])
                assert r.status_code == 503  # told, not silently dropped
                assert r.json()["error"]["code"] == "service_unavailable"
                redis.start()
                frame = await next_frame(ws, timeout=15)
                assert frame.kind == FrameKind.CONTROL
                assert frame.events[0]["type"] == "reset"
                # Restarted empty: the org's history is gone, a new sequence begins.
                assert frame.events[0]["reason"] == "history_lost"
                reset_seq = frame.events[0]["seq"]
                for _ in range(50):  # the publisher reconnects on its next command
                    r = await publish(a.http, token, [{"type": "t", "key": "k", "data": 3}])
                    if r.status_code == 202:
                        break
                    await asyncio.sleep(0.1)
                (frame,) = await frames_until(ws, 1)
                assert frame.events[0]["data"] == 3
                assert frame.first_seq == reset_seq + 1  # contiguous from the reset

        asyncio.run(scenario())
    finally:
        a.stop()
        redis.stop()


def test_sigterm_closes_streams_with_1012_and_releases_the_counts(
    redis_url: str, tmp_path: Path
) -> None:
    import redis as sync_redis

    prefix = f"test-rt-{uuid.uuid4().hex[:8]}"
    env = server_env(tmp_path, REDIS_URL=redis_url, REALTIME_REDIS_PREFIX=prefix)
    a = ServeProcess(tmp_path, env, "a")
    client = sync_redis.Redis.from_url(redis_url)
    try:
        token = a.token()

        async def scenario() -> None:
            conns = [await open_ws(a.ws, token) for _ in range(5)]
            for ws in conns:
                await hello(ws)
            assert client.zcard(f"{prefix}:conns:org:1") == 5
            await assert_sigterm_closes_with_1012(a.proc, conns)

        asyncio.run(scenario())
        # uvicorn re-raises the signal once it has shut down cleanly
        assert a.proc.wait(15) in (0, -signal.SIGTERM)
        assert client.zcard(f"{prefix}:conns:org:1") == 0
        assert client.zcard(f"{prefix}:conns:user:1") == 0
    finally:
        a.stop()
        client.delete(f"{prefix}:conns:org:1", f"{prefix}:conns:user:1")
        client.close()


@pytest.mark.redis
def test_watch_prints_the_events_of_the_seed_guide(tmp_path: Path) -> None:
    """A newcomer runs `serve`, then `watch` in one terminal and the curl guide in another."""
    import json
    import os
    import subprocess
    import sys

    import httpx2

    a = ServeProcess(tmp_path, server_env(tmp_path), "a")
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamcore_server",
            "watch",
            "--url",
            a.http,
            "--email",
            "user@example.com",
            "--password",
            "changeme",
            "--max-events",
            "2",
        ],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        assert "watching" in watch.stderr.readline()
        assert "subscribed to org:1" in watch.stderr.readline()  # before the write below
        token = a.token()
        r = httpx2.post(
            f"{a.http}/v1/finance/expenses",
            headers={"Authorization": f"Bearer {token}"},
            json=SEED_EXPENSE,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        out, _ = watch.communicate(timeout=15)
        lines = [json.loads(line) for line in out.splitlines()]
        assert [e["type"] for e in lines] == ["expense.created", "property.totals"]
        assert lines[0]["data"]["amountCents"] == 50000
        assert watch.returncode == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        a.stop()
