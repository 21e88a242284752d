"""Realtime delivery: hub, stream and publish endpoints, caps, fan-out (docs/REALTIME.md)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from .. import redis_client
from ..settings import Settings
from .caps import LocalCaps, RedisCaps
from .connections import CLOSE_SHUTDOWN
from .endpoint import operations, websocket_routes
from .fanout import RedisFanout
from .hub import Hub

__all__ = ["Hub", "operations", "start", "websocket_routes"]

# Bounds the wait for writers to send their 1012 closes at shutdown.
SHUTDOWN_GRACE_S = 2.0


async def start(app: Any, settings: Settings, stack: AsyncExitStack) -> Hub:
    """Create the hub, caps and fan-out for this process; undone when the stack closes."""
    hub = Hub(
        window_min_ms=settings.window_min_ms,
        window_max_ms=settings.window_max_ms,
        compression_threshold=settings.compression_threshold,
        zstd_level=settings.zstd_level,
        history_frames=settings.realtime_history_frames,
        history_age_s=settings.realtime_history_age_s,
        send_buffer_limit=settings.realtime_queue_max_bytes,
        flush_budget=settings.window_flush_budget,
    )
    hub.bind(asyncio.get_running_loop())
    app.state.hub = hub
    stack.callback(hub.close)

    if settings.redis_url:
        client = redis_client.connect(settings.redis_url, timeout=2.0)
        stack.push_async_callback(client.aclose)
        caps: Any = RedisCaps(
            client,
            settings.realtime_redis_prefix,
            settings.realtime_max_connections_per_user,
            settings.realtime_max_connections_per_org,
            settings.realtime_lease_s,
        )
        fanout = RedisFanout(
            settings.redis_url, settings.realtime_redis_prefix, hub.ingest, hub.reset_all
        )
        await fanout.start()
        stack.push_async_callback(fanout.stop)
        app.state.fanout = fanout
        sink = fanout.publish
    else:
        caps = LocalCaps(
            settings.realtime_max_connections_per_user, settings.realtime_max_connections_per_org
        )
        app.state.fanout = None
        sink = hub.ingest
    await caps.start()
    app.state.caps = caps
    stack.push_async_callback(caps.stop)
    stack.callback(app.state.events.subscribe(sink))

    async def close_connections() -> None:
        # uvicorn already closed its sockets with 1012; this covers servers that do not.
        hub.shutdown_connections(CLOSE_SHUTDOWN, "server shutting down")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
        while hub.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    stack.push_async_callback(close_connections)
    return hub
