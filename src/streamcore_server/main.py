"""Build the Starlette app from one Settings object."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from . import (
    apidocs,
    auth,
    cache,
    dashboard,
    edge,
    exit_watchdog,
    finance,
    health,
    http_protocol,
    idempotency,
    logs,
    metrics,
    realtime,
    redis_client,
    replicas,
    storage,
)
from .errors import EXCEPTION_HANDLERS, error_response
from .events import EventBus
from .middleware.authentication import AuthenticationMiddleware
from .middleware.body_limit import BodyLimitMiddleware
from .middleware.cache_control import CacheControlMiddleware
from .middleware.cors import CorsMiddleware
from .middleware.idempotency import IdempotencyMiddleware
from .middleware.metrics import MetricsMiddleware
from .middleware.read_your_writes import ReadYourWritesMiddleware
from .middleware.request_context import RequestContextMiddleware
from .openapi import Operation, body_limit, build_document, routes
from .responses import OrjsonResponse
from .settings import Settings


class OpenApiDocument(BaseModel):
    """This document."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, str]
    paths: dict[str, dict[str, object]]
    components: dict[str, object]


async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API."""
    return OrjsonResponse(request.app.state.openapi)


def websocket_not_found(http_default: ASGIApp) -> ASGIApp:
    """Answer a WebSocket to an unknown path with the 404 JSON (Starlette would close: 403)."""

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await http_default(scope, receive, send)
            return
        response = error_response(404, "not_found", f"No WebSocket endpoint at {scope['path']}.")
        if "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)  # Starlette sends it as a denial response
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "not found"})

    return default


# After uvicorn's 5 s for open connections, the app's shutdown and the interpreter's exit get
# this long before the watchdog ends the process: well inside a supervisor's usual SIGKILL delay.
EXIT_DEADLINE_S = 8.0


def create_app(settings: Settings | None = None, *, own_process: bool = False) -> Starlette:
    """Create the app; resources open in its lifespan and close when it ends.

    own_process: the app is the server process's one app (serve): once started, the heap built
    so far is frozen out of the garbage collector's scans, and the process ends EXIT_DEADLINE_S
    after the lifespan's shutdown began, whatever is still running (exit_watchdog).
    """
    settings = settings or Settings.from_env()
    operations: list[Operation] = [
        *health.operations,
        *auth.operations,
        *finance.operations,
        *realtime.operations,
        *metrics.operations(settings),
        *apidocs.operations,
        Operation(
            "GET",
            "/openapi.json",
            openapi_json,
            "The API description",
            "meta",
            responses={200: OpenApiDocument},
            auth=False,
        ),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.readiness_checks = {}
            engine = storage.create_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            await storage.migrate(engine)  # a no-op when the schema is current
            if engine.dialect.name == "postgresql":
                # The writes' single statements borrow these; given back before the dispose.
                storage.open_driver_connections(engine)
                stack.push_async_callback(storage.close_driver_connections, engine)
            app.state.db = engine

            async def database_ready() -> None:
                await storage.ping(app.state.db)

            app.state.readiness_checks["database"] = database_ready
            store, idem_redis = idempotency.open_store(
                settings, engine, app.state.idempotency_stats
            )
            if idem_redis is not None:
                stack.push_async_callback(idem_redis.aclose)
            app.state.idempotency = store
            app.state.tokens = auth.Tokens(
                settings.jwt_secret or auth.load_or_create_secret(settings.data_dir),
                settings.token_ttl_s,
            )
            if settings.redis_url:
                client = redis_client.connect(settings.redis_url, timeout=1.0)
                stack.push_async_callback(client.aclose)
                app.state.redis = client

                async def redis_ready() -> None:
                    await client.ping()

                app.state.readiness_checks["redis"] = redis_ready
                # One failed-login count for every instance on this Redis (docs/API.md, Auth).
                app.state.login_throttle = auth.SharedLoginThrottle(
                    client, settings.login_redis_prefix, app.state.login_throttle
                )
            # No readiness check of its own: reads go to the primary while no standby can serve.
            app.state.replicas = await replicas.start(app, settings, stack)
            app.state.summary_cache = cache.SummaryCache(
                getattr(app.state, "redis", None),
                f"{settings.metrics_redis_prefix}:summary",
                settings.database_url,
                finance.apply_write,
            )
            # Purges still pending at shutdown go out before the stores close.
            app.state.edge = await edge.open_edge(settings, stack)
            # Last in, so first out: streams close before the stores they read.
            await realtime.start(app, settings, stack)
            # After the hub, so it stops publishing (and withdraws) before the hub closes.
            await metrics.start(app, settings, stack)
            if own_process:
                # Modules, settings, pools, the compiled core: everything made so far lives as
                # long as the process. Frozen, a full collection no longer walks it each time,
                # which was a pause of tens of ms in a request's tail (docs/API.md).
                gc.collect()
                gc.freeze()
            try:
                yield
            finally:
                if own_process:
                    exit_watchdog.arm(EXIT_DEADLINE_S, asyncio.get_running_loop())

    # Handed to the middleware and read by the metrics endpoints (app.state.metrics).
    registry = metrics.Registry(op.route() for op in operations)
    middleware = [
        # Outermost of all: it times and counts every answer, the other middleware's included.
        Middleware(MetricsMiddleware, registry=registry),
        # Outermost first: every response, refusals included, carries the request id and CORS.
        Middleware(RequestContextMiddleware),
        Middleware(
            CorsMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                *("Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"),
                replicas.TOKEN_HEADER,
                "If-None-Match",
            ],
            # ETag: a browser app may revalidate finance reads itself (If-None-Match).
            expose_headers=[
                *("X-Request-ID", "Idempotent-Replayed", "Retry-After", "ETag"),
                replicas.TOKEN_HEADER,
            ],
            max_age=600,
        ),
        # Every answer without a policy of its own, refusals included, is no-store.
        Middleware(CacheControlMiddleware),
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=settings.max_body_bytes,
            route_limits={
                op.path: body_limit(op, settings) for op in operations if op.body and not op.auth
            },
        ),
        # Once per request, for routes, WebSockets and idempotency alike (scope state "auth").
        Middleware(AuthenticationMiddleware),
        # Outside idempotency: a replayed write's response gets a token like the original's.
        Middleware(
            ReadYourWritesMiddleware,
            routes=[op.route() for op in operations if op.consistency == "write"],
        ),
        # Innermost: the body is already bounded, and it sees exactly what the handler sends.
        Middleware(
            IdempotencyMiddleware,
            routes=[op.route() for op in operations if op.idempotent],
            mismatch_status=settings.idempotency_mismatch_status,
        ),
    ]
    app = Starlette(
        routes=[
            *routes(operations),
            *realtime.websocket_routes,
            *dashboard.routes,
            Mount(
                "/docs/assets", app=apidocs.Assets()
            ),  # the API page's files (streamcore_server/apidocs.py)
        ],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router.default = websocket_not_found(app.router.default)
    http_protocol.configure(settings.http_header_timeout_s, settings.http_body_timeout_s)
    app.state.settings = settings
    app.state.metrics = registry
    # Created here, not in the lifespan, so sinks (tests, the realtime channel) can subscribe first.
    app.state.events = EventBus()
    app.state.login_throttle = auth.LoginThrottle(
        settings.login_max_failures, settings.login_window_s
    )
    app.state.idempotency_stats = idempotency.Stats()
    app.state.edge = edge.Edge(settings)  # validators only until the lifespan opens the purger
    app.state.openapi = build_document(operations, settings)
    return app


def create_app_from_env() -> Starlette:
    """Build the app from the environment: the factory every `serve --workers N` worker calls."""
    settings = Settings.from_env()
    # A worker is a freshly spawned interpreter: the parent's JSON log handler is not inherited.
    logs.configure(settings.log_level)
    return create_app(settings, own_process=True)
