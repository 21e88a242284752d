"""MetricsMiddleware + Registry on a small Starlette app: templates, status classes, time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from streamcore_server.metrics import Registry, aggregate
from streamcore_server.metrics.registry import UNMATCHED, Snapshot
from streamcore_server.middleware.metrics import MetricsMiddleware


async def item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item_id"])


async def slow(request: Request) -> Response:
    await asyncio.sleep(0.05)
    return PlainTextResponse("slow")


async def broken(request: Request) -> Response:
    raise RuntimeError("boom")


async def teapot(request: Request) -> Response:
    return PlainTextResponse("no", status_code=418)


ROUTES = [
    Route("/items/{item_id}", item, methods=["GET"]),
    Route("/slow", slow, methods=["GET"]),
    Route("/broken", broken, methods=["GET"]),
    Route("/teapot", teapot, methods=["POST"]),
]


@pytest.fixture
def client() -> Iterator[TestClient]:
    registry = Registry(ROUTES)
    app = Starlette(routes=ROUTES, middleware=[Middleware(MetricsMiddleware, registry=registry)])
    app.state.metrics = registry
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def series(client: TestClient) -> dict[tuple[str, str], list[int]]:
    snap = client.app.state.metrics.snapshot()  # type: ignore[attr-defined]
    return {k: s.statuses[1:6] for k, s in snap.api.items()}


def test_route_templates_not_raw_paths(client: TestClient) -> None:
    for i in range(20):
        assert client.get(f"/items/{i}").status_code == 200
    got = series(client)
    assert got == {("/items/{item_id}", "GET"): [0, 20, 0, 0, 0]}


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    for i in range(30):
        assert client.get(f"/random/{i}").status_code == 404
    got = series(client)
    assert got == {(UNMATCHED, "GET"): [0, 0, 0, 30, 0]}


def test_status_classes_exceptions_and_wrong_methods(client: TestClient) -> None:
    assert client.get("/broken").status_code == 500
    assert client.post("/teapot").status_code == 418
    assert client.delete("/items/1").status_code == 405
    assert client.request("BREW", "/items/1").status_code == 405
    got = series(client)
    assert got[("/broken", "GET")] == [0, 0, 0, 0, 1]
    assert got[("/teapot", "POST")] == [0, 0, 0, 1, 0]
    # A known route with a method it does not serve keeps its template; odd methods are OTHER.
    assert got[("/items/{item_id}", "DELETE")] == [0, 0, 0, 1, 0]
    assert got[("/items/{item_id}", "OTHER")] == [0, 0, 0, 1, 0]


def test_latency_is_the_handlers_time(client: TestClient) -> None:
    for _ in range(3):
        client.get("/slow")
    snap = client.app.state.metrics.snapshot()  # type: ignore[attr-defined]
    hist = snap.api[("/slow", "GET")].hist
    assert hist.count == 3
    assert hist.min >= 0.05 and hist.max < 1.0


def build(snap: Snapshot, registry: Registry) -> dict:  # type: ignore[type-arg]
    return aggregate.build(
        snap,
        now=0.0,
        now_minute=registry.now_minute(),
        source={},
        database={},
        per_org_cap=10,
        per_user_cap=2,
    )


def test_slo_block_reports_the_seed_targets_and_verdicts() -> None:
    registry = Registry(ROUTES)
    endpoint = ROUTES[0].endpoint
    now = time.perf_counter()
    for _ in range(900):
        registry.record(endpoint, "GET", 200, 0.010, now)
    for _ in range(100):
        registry.record(endpoint, "GET", 200, 0.500, now)  # p95 = 500 ms: unmet
    for _ in range(2):  # 2 in 1002 are 5xx: 0.2 %, the error rate is unmet
        registry.record(endpoint, "GET", 503, 0.010, now)
    body = build(registry.snapshot(), registry)
    slo = {s["name"]: s for s in body["slo"]}
    assert {n: (s["comparison"], s["target"]) for n, s in slo.items()} == {
        "api_latency_p95": ("<", 0.3),
        "api_latency_p99": ("<", 0.8),
        "realtime_delivery_p95": ("<", 1.0),
        "cache_hit_ratio": (">", 0.85),
        "error_rate": ("<", 0.001),
        "availability": (">", 0.9995),
    }
    assert slo["api_latency_p95"]["current"] == pytest.approx(0.5, rel=0.01)
    assert slo["api_latency_p95"]["met"] is False
    assert slo["api_latency_p99"]["met"] is True
    assert slo["error_rate"]["current"] == pytest.approx(2 / 1002)
    assert slo["error_rate"]["met"] is False
    assert slo["availability"]["met"] is False
    # Not measured: null with a reason, never a number.
    assert slo["realtime_delivery_p95"]["current"] is None
    assert slo["realtime_delivery_p95"]["met"] is None and slo["realtime_delivery_p95"]["reason"]
    api = body["api"]
    assert api["lifetime"]["requests"] == 1002
    assert api["recent"]["requests"] == 1002
    assert api["lifetime"]["p50_ms"] == pytest.approx(10.0, rel=0.01)
    assert api["by_method"]["GET"]["error_rate_5xx"] == pytest.approx(2 / 1002)


def test_recent_window_forgets_old_minutes() -> None:
    registry = Registry(ROUTES)
    endpoint = ROUTES[0].endpoint
    now = time.perf_counter()
    registry.record(endpoint, "GET", 500, 0.2, now - 3600)  # an hour ago
    registry.record(endpoint, "GET", 200, 0.1, now)
    body = build(registry.snapshot(), registry)
    assert body["api"]["lifetime"]["requests"] == 2
    assert body["api"]["recent"]["requests"] == 1
    assert body["api"]["recent"]["availability"] == 1.0
    assert body["api"]["lifetime"]["availability"] == 0.5


def test_snapshot_round_trips_and_merges_like_one_process() -> None:
    now = time.perf_counter()
    a, b, both = Registry(ROUTES), Registry(ROUTES), Registry(ROUTES)
    for i in range(200):
        reg = a if i % 3 else b
        for r in (reg, both):
            r.record(ROUTES[i % 2].endpoint, "GET", 200 + (i % 4) * 100, i / 1000, now)
    merged = Snapshot.from_bytes(a.snapshot().to_bytes())
    merged.merge(Snapshot.from_bytes(b.snapshot().to_bytes()))
    want = both.snapshot()
    assert merged.api.keys() == want.api.keys()
    for key, s in want.api.items():
        assert merged.api[key].hist == s.hist
        assert merged.api[key].statuses == s.statuses
    assert merged.total().hist == want.total().hist


def test_a_corrupt_snapshot_is_refused() -> None:
    with pytest.raises(ValueError):
        Snapshot.from_bytes(b'{"v": 99}')


def test_minutes_roll_on_the_wall_clock_and_keep_their_counts() -> None:
    registry = Registry(ROUTES)
    endpoint = ROUTES[0].endpoint
    now = time.perf_counter()
    # Around a minute boundary, back and forth: every request lands in its own minute, once.
    boundary = (registry.now_minute() + 1) * 60 - registry._offset
    for t in (boundary - 0.001, boundary, boundary - 0.0005, boundary + 0.001, now):
        registry.record(endpoint, "GET", 200, 0.01, t)
    snap = registry.snapshot()
    assert sum(s.requests for s in snap.minutes.values()) == 5
    assert snap.total().requests == 5
