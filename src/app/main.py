"""Build the Starlette app from one Settings object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import redis.asyncio as aioredis
from starlette.applications import Starlette

from . import health
from .errors import EXCEPTION_HANDLERS
from .settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    """Create the app; resources open in its lifespan and close when it ends."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.readiness_checks = {}
            if settings.redis_url:
                client = aioredis.Redis.from_url(
                    settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
                )
                stack.push_async_callback(client.aclose)
                app.state.redis = client

                async def redis_ready() -> None:
                    await client.ping()

                app.state.readiness_checks["redis"] = redis_ready
            yield

    app = Starlette(
        routes=[*health.routes],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
