"""Realtime delivery: hub, broker, stream and publish endpoints, caps (docs/REALTIME.md)."""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import AsyncExitStack
from typing import Any

from .. import redis_client
from ..settings import Settings
from .broker import LocalBroker
from .caps import LocalCaps
from .connections import CLOSE_SHUTDOWN
from .endpoint import operations, websocket_routes
from .hub import Hub

__all__ = ["Hub", "operations", "start", "websocket_routes"]

# Bounds the wait for writers to send their 1012 closes at shutdown.
SHUTDOWN_GRACE_S = 2.0


async def start(app: Any, settings: Settings, stack: AsyncExitStack) -> Hub:
    """Create the hub, broker and caps for this process; undone when the stack closes."""
    hub = Hub(
        window_min_ms=settings.window_min_ms,
        window_max_ms=settings.window_max_ms,
        compression_threshold=settings.compression_threshold,
        zstd_level=settings.zstd_level,
        send_buffer_limit=settings.realtime_queue_max_bytes,
        flush_budget=settings.window_flush_budget,
    )
    hub.bind(asyncio.get_running_loop())
    hub.instance = f"{socket.gethostname()}:{os.getpid()}"
    app.state.hub = hub
    stack.callback(hub.close)

    broker: Any
    if settings.redis_url:
        from .caps import RedisCaps
        from .redis_broker import RedisBroker  # redis-py with them: only when Redis is used

        client = redis_client.connect(settings.redis_url, timeout=2.0)
        stack.push_async_callback(client.aclose)
        caps: Any = RedisCaps(
            client,
            settings.realtime_redis_prefix,
            settings.realtime_max_connections_per_user,
            settings.realtime_max_connections_per_org,
            settings.realtime_lease_s,
        )
        broker = RedisBroker(
            settings.redis_url,
            settings.realtime_redis_prefix,
            hub,
            history_events=settings.realtime_history_events,
            history_age_s=settings.realtime_history_age_s,
            unsubscribe_grace_s=settings.realtime_unsubscribe_grace_s,
            outbox_max=settings.realtime_outbox_max,
            retry_s=settings.realtime_outbox_retry_s,
        )
    else:
        caps = LocalCaps(
            settings.realtime_max_connections_per_user, settings.realtime_max_connections_per_org
        )
        broker = LocalBroker(
            hub,
            history_events=settings.realtime_history_events,
            history_age_s=settings.realtime_history_age_s,
        )
    await broker.start()
    stack.push_async_callback(broker.stop)
    hub.source = broker
    app.state.broker = broker
    await caps.start()
    app.state.caps = caps
    stack.push_async_callback(caps.stop)
    # Finance writes hand their events over here, after commit.
    stack.callback(app.state.events.subscribe(broker.publish))

    async def close_connections() -> None:
        # uvicorn already closed its sockets with 1012; this covers servers that do not.
        hub.shutdown_connections(CLOSE_SHUTDOWN, "server shutting down")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
        while hub.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    stack.push_async_callback(close_connections)
    return hub
