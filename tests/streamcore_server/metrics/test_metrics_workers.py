"""Two server processes sharing Redis report the whole service from either endpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from processes import ServeProcess
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from streamcore_server.main import create_app
from streamcore_server.settings import Settings

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"
INTERVAL_S = 0.2

pytestmark = pytest.mark.redis


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def when(value: Any, test: Callable[[Any], bool]) -> Any:
    return value if test(value) else None


def healthz_count(body: dict[str, Any]) -> int:
    for row in body["api"]["by_route"]:
        if (row["route"], row["method"]) == ("/healthz", "GET"):
            return int(row["requests"])
    return 0


def prom_healthz(server: ServeProcess) -> float:
    fams = {f.name: f for f in text_string_to_metric_families(server.get(PROM).text)}
    return sum(
        s.value
        for s in fams["streamcore_http_requests"].samples
        if s.labels.get("route") == "/healthz"
    )


async def test_two_processes_merge_through_redis(tmp_path: Path, redis_url: str) -> None:
    prefix = f"test:metrics:{uuid.uuid4().hex[:10]}"
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/var/streamcore.db",
        "DATA_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "warning",
        "REDIS_URL": redis_url,
        "METRICS_REDIS_PREFIX": prefix,
        "REALTIME_REDIS_PREFIX": f"{prefix}:rt",
        "IDEMPOTENCY_REDIS_PREFIX": f"{prefix}:idem:",
        "METRICS_PUBLISH_INTERVAL_S": str(INTERVAL_S),
    }
    a = ServeProcess(tmp_path, env, "a")
    b = None
    try:
        b = ServeProcess(tmp_path, env, "b")
        for _ in range(3):
            assert a.get("/healthz").status_code == 200
        for _ in range(4):
            assert b.get("/healthz").status_code == 200
        token = b.token()
        async with connect(
            b.ws, additional_headers={"Authorization": f"Bearer {token}"}, compression=None
        ) as ws:
            await ws.recv()  # hello: the connection is registered on b
            # a reports b's requests and b's connection, at most one interval late.
            body = wait_for(
                lambda: when(
                    a.get(AGG).json(),
                    lambda x: healthz_count(x) == 7 and x["connections"]["total"] == 1,
                ),
                "a to see both processes",
            )
            assert body["source"]["scope"] == "service"
            assert len(body["source"]["instances"]) == 2
            assert body["source"]["max_staleness_s"] < 3 * INTERVAL_S + 1
            assert body["connections"]["top_orgs"][0]["connections"] == 1
            assert body["connections"]["top_orgs"][0]["utilisation"] > 0
            assert wait_for(lambda: prom_healthz(b) == 7, "b's Prometheus export to sum both")
        b.stop()
        b = None
        # A stopped process withdraws; what it served leaves the sums with it.
        body = wait_for(
            lambda: when(a.get(AGG).json(), lambda x: len(x["source"]["instances"]) == 1),
            "b to drop out",
        )
        assert healthz_count(body) == 3
    finally:
        if b is not None:
            b.stop()
        a.stop()


def test_without_redis_answering_the_endpoint_reports_this_process(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/app.db",
        data_dir=str(tmp_path / "var"),
        redis_url="redis://127.0.0.1:1/0",  # nothing listens there
        metrics_publish_interval_s=0.1,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.get("/healthz")
        body = client.get(AGG).json()
        assert body["source"]["scope"] == "process"
        assert "Redis did not answer" in body["source"]["reason"]
        assert healthz_count(body) == 1
        assert client.get(PROM).status_code == 200
