"""Realtime, connection and idempotency numbers in both endpoints, from the real hub and stores."""

from __future__ import annotations

import pytest
from app_support import Api
from prometheus_client.parser import text_string_to_metric_families

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"


def test_realtime_delivery_and_conflation(api_factory: object, sqlite_url: str) -> None:
    api: Api = api_factory(sqlite_url, window_min_ms=20.0, window_max_ms=40.0)  # type: ignore[operator]
    t = api.tenant("Acme")
    # 10 updates of one key and 5 distinct keys: 15 events in, 6 out after conflation.
    events = [{"type": "price", "key": "k", "data": i} for i in range(10)]
    events += [{"type": "note", "key": f"n{i}", "data": i} for i in range(5)]
    # Windows exist for orgs someone watches: a subscriber first.
    with api.client.websocket_connect("/v2/realtime/stream?codec=none", headers=t.auth) as ws:
        ws.receive_bytes()  # hello
        r = api.client.post("/v2/realtime/publish", json={"events": events}, headers=t.auth)
        assert r.status_code == 202, r.text
        ws.receive_bytes()  # the window's one frame
        rt = api.client.get(AGG).json()["realtime"]
    assert rt["events_in"] == 15
    assert rt["events_out"] == 6
    assert rt["conflation_ratio"] == pytest.approx(15 / 6)
    assert rt["frames_flushed"] == 1
    assert rt["frame_bytes_raw"] > 0 and rt["frame_bytes_sent"] > 0
    assert rt["compressed_share"] is not None
    window = rt["window_length"]
    assert window["count"] == 1
    # The first window after idle ends at the channel's next grid point: within WINDOW_MIN_MS
    # (plus timer lateness), possibly much sooner.
    assert 0.0 < window["p50_ms"] < 1000.0
    delivery = rt["delivery_latency"]
    assert delivery["count"] == 1 and delivery["p50_ms"] >= window["p50_ms"] * 0.99
    body = api.client.get(AGG).json()
    slo = {s["name"]: s for s in body["slo"]}
    assert slo["realtime_delivery_p95"]["met"] is True
    prom = {f.name: f for f in text_string_to_metric_families(api.client.get(PROM).text)}
    hist = prom["streamcore_realtime_delivery_seconds"]
    count = [s.value for s in hist.samples if s.name.endswith("_count")]
    assert count == [1]
    assert [s.value for s in prom["streamcore_realtime_events_in"].samples] == [15]
    assert [s.value for s in prom["streamcore_realtime_events_out"].samples] == [6]


def test_idempotency_counters(sqlite_api: Api) -> None:
    t = sqlite_api.tenant("Acme")
    body = {
        "propertyId": t.property_id,
        "category": "maintenance",
        "amountCents": 500,
        "currency": "INR",
        "expenseDate": "2025-12-13T10:00:00Z",
        "paymentMode": "cash",
    }
    headers = {**t.auth, "Idempotency-Key": "metrics-1"}
    assert (
        sqlite_api.client.post("/v1/finance/expenses", json=body, headers=headers).status_code
        == 201
    )
    replay = sqlite_api.client.post("/v1/finance/expenses", json=body, headers=headers)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    other = {**body, "amountCents": 501}
    assert (
        sqlite_api.client.post("/v1/finance/expenses", json=other, headers=headers).status_code
        == 409
    )
    agg = sqlite_api.client.get(AGG).json()
    assert agg["idempotency"]["stored"] == 1
    assert agg["idempotency"]["replayed"] == 1
    assert agg["idempotency"]["conflicts"] == 1
    # A replay is answered before routing, and still counts under its route template.
    routes = {(x["route"], x["method"]): x for x in agg["api"]["by_route"]}
    assert routes[("/v1/finance/expenses", "POST")]["requests"] == 3
    prom = {f.name: f for f in text_string_to_metric_families(sqlite_api.client.get(PROM).text)}
    assert [s.value for s in prom["streamcore_idempotency_replays"].samples] == [1]
