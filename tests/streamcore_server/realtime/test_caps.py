"""Connection caps: refusals at the handshake, counts released on every way a connection ends."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from support import hello, open_ws
from waiting import eventually_async
from websockets.exceptions import InvalidStatus

from streamcore_server.realtime.caps import CapExceeded, Lease, RedisCaps


async def _refused(url: str, token: str) -> tuple[int, Any, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        await open_ws(url, token)
    r = info.value.response
    return r.status_code, r.headers, orjson.loads(r.body)


async def test_the_eleventh_connection_of_a_user_is_refused(rt: Any) -> None:
    t = await rt.tenant()
    conns = [await open_ws(rt.ws, t["token"]) for _ in range(10)]
    status, headers, body = await _refused(rt.ws, t["token"])
    assert status == 429
    assert int(headers["Retry-After"]) > 0
    assert body["error"]["code"] == "connection_limit_exceeded"
    assert body["error"]["message"] == "User connection limit exceeded"
    assert rt.hub.metrics.refused_user_cap == 1
    await conns[0].close()
    for _ in range(100):  # the server notices the close and releases the count
        if rt.app.state.caps.counts(t["users"][0], t["org"])[0] == 9:
            break
        await asyncio.sleep(0.02)
    async with await open_ws(rt.ws, t["token"]) as ws:
        await hello(ws)
    for ws in conns[1:]:
        await ws.close()


async def test_the_org_cap_counts_every_user_of_the_org(rt_factory: Any) -> None:
    rt = await rt_factory(realtime_max_connections_per_org=3)
    t = await rt.tenant(users=4)
    conns = [await open_ws(rt.ws, tok) for tok in t["tokens"][:3]]
    status, _, body = await _refused(rt.ws, t["tokens"][3])
    assert (status, body["error"]["message"]) == (429, "Org connection limit exceeded")
    assert rt.hub.metrics.refused_org_cap == 1
    other = await rt.tenant()  # another org is not affected
    async with await open_ws(rt.ws, other["token"]) as ws:
        await hello(ws)
    for ws in conns:
        await ws.close()


@pytest.mark.parametrize("store", ["local", pytest.param("redis", marks=pytest.mark.redis)])
async def test_thousands_of_opened_and_dropped_connections_leave_no_count(
    rt_factory: Any, store: str, request: pytest.FixtureRequest
) -> None:
    shared: dict[str, Any] = {}
    if store == "redis":
        # Hundreds of releases at once must all reach Redis (the pool queues them), not wait
        # for their leases to expire.
        prefix = f"test-caps-{uuid.uuid4().hex[:8]}"
        url = request.getfixturevalue("redis_url")
        shared = {"redis_url": url, "realtime_redis_prefix": prefix, "realtime_lease_s": 60.0}
    rt = await rt_factory(
        realtime_max_connections_per_user=10_000, realtime_max_connections_per_org=10_000, **shared
    )
    t = await rt.tenant()
    caps = rt.app.state.caps
    redis = aioredis.Redis.from_url(shared["redis_url"]) if shared else None

    async def counted() -> int:
        if redis is None:
            return int(caps.total())
        return int(await redis.zcard(caps.org_key(t["org"])))

    try:
        for round_ in range(4):
            conns = []
            for _ in range(5):  # 500 open at once, opened 100 at a time: the drops are the point
                conns += await asyncio.gather(*(open_ws(rt.ws, t["token"]) for _ in range(100)))
            assert await counted() == 500
            for i, ws in enumerate(conns):
                if i % 2:
                    ws.transport.abort()  # a network drop: no close handshake
                else:
                    await ws.close()
            for _ in range(250):
                if await counted() == 0 and not rt.hub.connections:
                    break
                await asyncio.sleep(0.02)
            assert await counted() == 0, f"round {round_}: {await counted()} counts left"
            assert not rt.hub.connections
    finally:
        if redis is not None:
            await redis.delete(caps.org_key(t["org"]), caps.user_key(t["users"][0]))
            await redis.aclose()


async def test_server_side_evictions_release_the_count(rt: Any) -> None:
    t = await rt.tenant()
    ws = await open_ws(rt.ws, t["token"])
    await hello(ws)
    (conn,) = rt.hub.connections
    conn.shutdown(1013, "slow consumer")
    await ws.wait_closed()
    assert ws.close_code == 1013
    for _ in range(100):
        if rt.app.state.caps.total() == 0:
            break
        await asyncio.sleep(0.02)
    assert rt.app.state.caps.total() == 0


@pytest.mark.redis
async def test_redis_leases_of_a_dead_worker_expire(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"test-caps-{uuid.uuid4().hex[:8]}"
    try:
        dead = RedisCaps(client, prefix, per_user=2, per_org=10, lease_s=0.5)
        alive = RedisCaps(client, prefix, per_user=2, per_org=10, lease_s=0.5)
        await dead.acquire(Lease("a", 1, 1))
        await alive.acquire(Lease("b", 1, 1))
        with pytest.raises(Exception, match="User connection limit exceeded"):
            await alive.acquire(Lease("c", 1, 1))
        await alive.start()  # only `alive` refreshes; `dead` died without releasing

        async def acquired() -> bool:
            try:
                await alive.acquire(Lease("c", 1, 1))
            except CapExceeded:
                return False
            return True

        await eventually_async(acquired, "a's lease to expire")  # b's is refreshed meanwhile
        with pytest.raises(Exception, match="User connection limit exceeded"):
            await alive.acquire(Lease("d", 1, 1))
        await alive.stop()  # releases b and c
        assert await client.zcard(alive.user_key(1)) == 0
    finally:
        await client.delete(f"{prefix}:conns:user:1", f"{prefix}:conns:org:1")
        await client.aclose()


@pytest.mark.redis
@pytest.mark.slow
def test_caps_hold_across_two_server_processes(redis_url: str, tmp_path: Path) -> None:
    from processes import ServeProcess, server_env

    prefix = f"test-rt-{uuid.uuid4().hex[:8]}"
    env = server_env(
        tmp_path,
        REDIS_URL=redis_url,
        REALTIME_REDIS_PREFIX=prefix,
        REALTIME_MAX_CONNECTIONS_PER_USER=3,
        REALTIME_LEASE_S=1.5,
    )
    a = ServeProcess(tmp_path, env, "a")
    b = ServeProcess(tmp_path, env, "b")
    try:
        token = a.token()

        async def scenario() -> None:
            on_a = [await open_ws(a.ws, token) for _ in range(2)]
            on_b = await open_ws(b.ws, token)
            for ws in (*on_a, on_b):
                await hello(ws)
            for url in (a.ws, b.ws):
                status, _, body = await _refused(url, token)
                assert (status, body["error"]["message"]) == (429, "User connection limit exceeded")
            # a dies without releasing: its two leases expire within REALTIME_LEASE_S
            a.stop(sig=9)
            more: list[Any] = []

            async def reconnected() -> bool:
                try:
                    more.append(await open_ws(b.ws, token))
                except InvalidStatus:
                    return False
                return len(more) == 2

            await eventually_async(reconnected, "the dead server's leases to expire")
            status, _, _ = await _refused(b.ws, token)
            assert status == 429
            for ws in (*more, on_b):
                await ws.close()

        asyncio.run(scenario())
        client = __import__("redis").Redis.from_url(redis_url)
        try:
            b.stop()  # SIGTERM: releases what b still held
            assert client.zcard(f"{prefix}:conns:user:1") == 0
        finally:
            client.delete(f"{prefix}:conns:user:1", f"{prefix}:conns:org:1")
            client.close()
    finally:
        a.stop()
        b.stop()


async def test_a_handshake_while_redis_is_down_is_refused_with_503_not_an_error(
    rt_factory: Any,
) -> None:
    from processes import PrivateRedis

    private = PrivateRedis()  # this test stops its own Redis, never the shared one
    try:
        rt = await rt_factory(redis_url=private.url, realtime_redis_prefix="test-caps-down")
        t = await rt.tenant()
        ws = await open_ws(rt.ws, t["token"])
        await hello(ws)
        await ws.close()
        private.stop()
        status, headers, body = await _refused(rt.ws, t["token"])
        assert status == 503 and headers["Retry-After"] == "5"
        assert body["error"]["code"] == "service_unavailable"
        assert rt.hub.metrics.refused_unavailable == 1 and not rt.hub.connections
    finally:
        private.stop()
