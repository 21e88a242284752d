"""Redis clients of the app: a bounded pool that queues a command for a free connection.

redis-py's default pool holds 100 connections and fails a command at once when all are busy:
a thousand WebSocket clients dropping together then failed most of their lease releases. A
blocking pool waits up to the command's own timeout instead, so a burst costs latency, not errors.
"""

from __future__ import annotations

import redis.asyncio as aioredis

MAX_CONNECTIONS = 64  # per client; an app holds a few clients, each far from Redis's limit


def connect(
    url: str,
    *,
    timeout: float,
    connect_timeout: float = 1.0,
    max_connections: int = MAX_CONNECTIONS,
) -> aioredis.Redis:
    """A client whose pool waits at most `timeout` for a connection, then raises."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
    )
    return aioredis.Redis.from_pool(pool)
