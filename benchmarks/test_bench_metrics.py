"""Metrics: the middleware's per-request cost against the same app without it, and one scrape.

The request benchmarks drive the ASGI app directly (no sockets), so the difference between the
pair is the middleware alone. The scrape benchmarks render a registry of 100 routes x 2 methods
with 1,000 orgs holding connections, against prometheus_client exposing the same series.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import Histogram as PromHistogram
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from streamcore import Histogram
from streamcore_server.metrics import aggregate, exposition
from streamcore_server.metrics.registry import Registry
from streamcore_server.metrics.slo import LATENCY_EDGES
from streamcore_server.middleware.metrics import MetricsMiddleware

REQUESTS = 2_000  # per round
ROUTES = 100
ORGS = 1_000
TARGET_US = 5.0


def _endpoint(i: int):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    endpoint.__name__ = f"endpoint_{i}"
    return endpoint


def _routes() -> list[Route]:
    return [
        Route(f"/r{i}/{{item_id}}", _endpoint(i), methods=["GET", "POST"]) for i in range(ROUTES)
    ]


def _app(with_metrics: bool) -> Starlette:
    routes = _routes()
    middleware = [Middleware(MetricsMiddleware, registry=Registry(routes))] if with_metrics else []
    return Starlette(routes=routes, middleware=middleware)


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/r50/42",
    "raw_path": b"/r50/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench")],
    "server": ("bench", 80),
    "client": ("127.0.0.1", 1234),
}


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: object) -> None:
    pass


def _driver(app: Starlette):  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()

    async def many() -> None:
        for _ in range(REQUESTS):
            await app(dict(SCOPE), _receive, _send)

    def run() -> None:
        loop.run_until_complete(many())

    return run, loop


def _interleaved_overhead_us(rounds: int = 15) -> tuple[float, float, float]:
    """Best-of-N per-request time without and with the middleware, measured alternately."""
    plain, loop_a = _driver(_app(False))
    metered, loop_b = _driver(_app(True))
    best = {"plain": float("inf"), "metered": float("inf")}
    try:
        for _ in range(rounds):
            for name, run in (("plain", plain), ("metered", metered)):
                t0 = time.perf_counter()
                run()
                best[name] = min(best[name], (time.perf_counter() - t0) / REQUESTS)
    finally:
        loop_a.close()
        loop_b.close()
    return best["plain"] * 1e6, best["metered"] * 1e6, (best["metered"] - best["plain"]) * 1e6


def _isolated_overhead_us(n: int = 50_000, rounds: int = 7) -> float:
    """The middleware around an ASGI app that answers at once: its own cost, little noise."""
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"ok"}

    def endpoint() -> None:
        pass

    async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
        scope["endpoint"] = endpoint
        await send(start)
        await send(body)

    metered = MetricsMiddleware(bare, Registry())
    loop = asyncio.new_event_loop()

    async def many(app) -> None:  # type: ignore[no-untyped-def]
        scope = {"type": "http", "method": "GET", "path": "/x"}
        for _ in range(n):
            await app(scope, _receive, _send)

    best = {"bare": float("inf"), "metered": float("inf")}
    try:
        for _ in range(rounds):
            for name, app in (("bare", bare), ("metered", metered)):
                t0 = time.perf_counter()
                loop.run_until_complete(many(app))
                best[name] = min(best[name], (time.perf_counter() - t0) / n)
    finally:
        loop.close()
    return (best["metered"] - best["bare"]) * 1e6


@pytest.mark.benchmark(group="metrics-middleware-request")
def test_request_without_metrics(benchmark):  # type: ignore[no-untyped-def]
    run, loop = _driver(_app(False))
    benchmark.extra_info["baseline"] = True
    benchmark.extra_info["items"] = REQUESTS
    try:
        benchmark(run)
    finally:
        loop.close()


@pytest.mark.benchmark(group="metrics-middleware-request")
def test_request_with_metrics(benchmark):  # type: ignore[no-untyped-def]
    plain_us, metered_us, overhead_us = _interleaved_overhead_us()
    benchmark.extra_info["items"] = REQUESTS
    benchmark.extra_info["target"] = f"middleware adds < {TARGET_US:g} µs per request"
    benchmark.extra_info["overhead_us_per_request"] = round(overhead_us, 3)
    benchmark.extra_info["overhead_target_met"] = overhead_us < TARGET_US
    isolated_us = _isolated_overhead_us()
    benchmark.extra_info["isolated_overhead_us"] = round(isolated_us, 3)
    benchmark.extra_info["isolated_target_met"] = isolated_us < TARGET_US
    benchmark.extra_info["interleaved_us"] = f"{plain_us:.2f} without, {metered_us:.2f} with"
    app = _app(True)
    run, loop = _driver(app)
    try:
        benchmark(run)
    finally:
        loop.close()


# -- one scrape ----------------------------------------------------------------------------------


def _latencies(n: int, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).lognormal(-4.0, 1.5, n), 1e-6, 3600.0)


def _registry() -> Registry:
    routes = _routes()
    registry = Registry(routes)
    now = time.perf_counter()
    for i, route in enumerate(routes):
        for method in ("GET", "POST"):
            for status in (200, 404, 500):
                registry.record(route.endpoint, method, status, 0.01, now)
            registry._series[(route.endpoint, method)].hist.record_many(_latencies(1_000, i))
    return registry


def _scrape_snapshot(registry: Registry):  # type: ignore[no-untyped-def]
    snap = registry.snapshot()
    snap.histograms = {"realtime_delivery": Histogram(), "realtime_window": Histogram()}
    snap.histograms["realtime_delivery"].record_many(_latencies(10_000, 99))
    snap.org_connections = {org: 1 + org % 50 for org in range(ORGS)}
    snap.gauges["realtime_connections"] = sum(snap.org_connections.values())
    return snap


@pytest.mark.benchmark(group="metrics-scrape")
def test_scrape_prometheus_client(benchmark):  # type: ignore[no-untyped-def]
    """The same series held by prometheus_client objects, rendered by generate_latest."""
    reg = CollectorRegistry()
    buckets = [*LATENCY_EDGES, float("inf")]
    hist = PromHistogram(
        "streamcore_http_request_duration_seconds",
        "d",
        ["route", "method"],
        registry=reg,
        buckets=buckets,
    )
    count = Counter(
        "streamcore_http_requests", "r", ["route", "method", "status_class"], registry=reg
    )
    orgs = Gauge("streamcore_realtime_org_connections", "o", ["org_id"], registry=reg)
    for i in range(ROUTES):
        for method in ("GET", "POST"):
            child = hist.labels(f"/r{i}/{{item_id}}", method)
            for v in _latencies(200, i):
                child.observe(float(v))
            for cls in ("2xx", "4xx", "5xx"):
                count.labels(f"/r{i}/{{item_id}}", method, cls).inc()
    for org in range(10):  # top-N only, as the app exports
        orgs.labels(str(org)).set(org)
    benchmark.extra_info["baseline"] = True
    benchmark(generate_latest, reg)


@pytest.mark.benchmark(group="metrics-scrape")
def test_scrape_prometheus_text(benchmark):  # type: ignore[no-untyped-def]
    registry = _registry()
    benchmark.extra_info["target"] = "one scrape of 100 routes and 1,000 orgs"
    benchmark.extra_info["series"] = ROUTES * 2

    def scrape() -> bytes:
        return exposition.render(_scrape_snapshot(registry), org_cap=1000)

    body = benchmark(scrape)
    benchmark.extra_info["bytes"] = len(body)


@pytest.mark.benchmark(group="metrics-scrape")
def test_scrape_aggregated_json(benchmark):  # type: ignore[no-untyped-def]
    registry = _registry()
    benchmark.extra_info["target"] = "one JSON scrape (percentiles, SLOs) of 100 routes, 1,000 orgs"

    def scrape() -> bytes:
        snap = _scrape_snapshot(registry)
        body = aggregate.build(
            snap,
            now=time.time(),
            now_minute=registry.now_minute(),
            source={},
            database={},
            per_org_cap=1000,
            per_user_cap=10,
        )
        return orjson.dumps(body)

    body = benchmark(scrape)
    benchmark.extra_info["bytes"] = len(body)
