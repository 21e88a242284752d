"""Redis clients of the app (a bounded pool that queues for a free connection) and a breaker.

redis-py's default pool holds 100 connections and fails a command at once when all are busy:
a thousand WebSocket clients dropping together then failed most of their lease releases. A
blocking pool waits up to the command's own timeout instead, so a burst costs latency, not errors.

redis-py is imported by `connect` and by the classes that talk to Redis, never at start-up: a
server without REDIS_URL does not hold it (about 6 MB resident).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
    )
    return aioredis.Redis.from_pool(pool)


def is_error(exc: BaseException) -> bool:
    """True for redis-py's errors; with redis-py not loaded, nothing raised can be one."""
    errors = sys.modules.get("redis.exceptions")
    return errors is not None and isinstance(exc, errors.RedisError)


class Breaker:
    """Skip Redis for a while after it fails: an outage costs one timeout, not one per request.

    Logs once when an incident starts (`down`) and once when Redis answers again (`up`).
    """

    def __init__(
        self,
        log: logging.Logger,
        down: str,
        up: str,
        clock: Callable[[], float] = time.monotonic,  # tests step their own
    ) -> None:
        self._log, self._down, self._up = log, down, up
        self._clock = clock
        self._until = 0.0
        self._incident = False

    def usable(self) -> bool:
        return self._clock() >= self._until

    def failed(self, exc: BaseException, pause_s: float) -> None:
        self._until = max(self._until, self._clock() + pause_s)
        if not self._incident:
            self._incident = True
            self._log.warning(self._down, extra={"error": type(exc).__name__})

    def ok(self) -> None:
        if self._incident:
            self._incident = False
            self._log.warning(self._up)
