"""The two endpoints on the full app: shape, token, OpenAPI, and both Prometheus parsers."""

from __future__ import annotations

import math
from typing import Any

import pytest
from app_support import Api
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from streamcore_server.metrics import exposition
from streamcore_server.metrics.registry import UNMATCHED
from streamcore_server.metrics.slo import LATENCY_EDGES

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"
OM_ACCEPT = {"Accept": "application/openmetrics-text; version=1.0.0"}


def traffic(api: Api) -> None:
    for _ in range(5):
        assert api.client.get("/healthz").status_code == 200
    for i in range(7):
        assert api.client.get(f"/no/such/path/{i}").status_code == 404
    assert api.client.get("/v1/finance/summary").status_code == 401


def test_aggregated_reports_routes_errors_and_slos(sqlite_api: Api) -> None:
    traffic(sqlite_api)
    r = sqlite_api.client.get(AGG)
    assert r.status_code == 200
    body = r.json()
    routes = {(x["route"], x["method"]): x for x in body["api"]["by_route"]}
    assert routes[("/healthz", "GET")]["responses"]["2xx"] == 5
    assert routes[(UNMATCHED, "GET")]["responses"]["4xx"] == 7
    assert routes[("/v1/finance/summary", "GET")]["responses"]["4xx"] == 1
    assert not any(r.startswith("/no/") for r, _ in routes)
    life = body["api"]["lifetime"]
    assert life["requests"] == 13
    assert life["error_rate_4xx"] == pytest.approx(8 / 13)
    assert life["availability"] == 1.0
    assert life["p50_ms"] > 0
    assert body["source"]["scope"] == "process" and body["source"]["reason"]
    assert len(body["slo"]) == 6
    slo = {s["name"]: s for s in body["slo"]}
    assert slo["availability"]["met"] is True and slo["error_rate"]["met"] is True
    assert slo["cache_hit_ratio"]["current"] is None and slo["cache_hit_ratio"]["reason"]
    db = body["database"]
    assert db["replica_lag_s"] is None and db["replica_reason"]
    assert db["partitions_ready"] is None and db["partitions_reason"]
    assert db["pool"]["size"] >= 1 and db["pool"]["in_use"] >= 0


def test_token_protects_both_endpoints(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url, metrics_token="s3cret-metrics-token")
    for path in (AGG, PROM):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            r = api.client.get(path, headers=headers)
            assert r.status_code == 401
            assert set(r.json()["error"]) == {"code", "message", "details"}
        ok = api.client.get(path, headers={"Authorization": "Bearer s3cret-metrics-token"})
        assert ok.status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "401" in paths[AGG]["get"]["responses"] and "401" in paths[PROM]["get"]["responses"]


def test_both_endpoints_are_documented(sqlite_api: Api) -> None:
    paths = sqlite_api.client.get("/openapi.json").json()["paths"]
    assert "get" in paths[AGG] and "get" in paths[PROM]
    assert "401" not in paths[PROM]["get"]["responses"]  # no METRICS_TOKEN here


def families(text: str, openmetrics: bool) -> dict[str, Any]:
    parse = parse_openmetrics if openmetrics else parse_text
    return {f.name: f for f in parse(text)}


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exposition_parses_strictly_with_real_histograms(
    sqlite_api: Api, openmetrics: bool
) -> None:
    traffic(sqlite_api)
    r = sqlite_api.client.get(PROM, headers=OM_ACCEPT if openmetrics else {})
    assert r.status_code == 200
    want = exposition.OPENMETRICS_CONTENT_TYPE if openmetrics else exposition.TEXT_CONTENT_TYPE
    assert r.headers["content-type"] == want
    fams = families(r.text, openmetrics)
    assert all(name.startswith("streamcore_") for name in fams)
    requests = fams["streamcore_http_requests"]  # both parsers drop _total from the family
    assert requests.type == "counter"
    counts = {
        (s.labels["route"], s.labels["status_class"]): s.value
        for s in requests.samples
        if s.name.endswith("_total")
    }
    assert counts[("/healthz", "2xx")] == 5
    assert counts[(UNMATCHED, "4xx")] == 7
    hist = fams["streamcore_http_request_duration_seconds"]
    assert hist.type == "histogram"
    health = [s for s in hist.samples if s.labels.get("route") == "/healthz"]
    buckets = [(float(s.labels["le"]), s.value) for s in health if s.name.endswith("_bucket")]
    edges = [e for e, _ in buckets]
    assert edges == [*LATENCY_EDGES, math.inf]
    assert {0.3, 0.8, 1.0} <= set(edges)
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 5
    # Raw series only: no quantiles, no SLO verdicts.
    assert not any("quantile" in s.labels for f in fams.values() for s in f.samples)
    assert not any("slo" in name.split("_") for name in fams)


def test_openmetrics_ends_with_eof_and_text_does_not(sqlite_api: Api) -> None:
    om = sqlite_api.client.get(PROM, headers=OM_ACCEPT).text
    text = sqlite_api.client.get(PROM).text
    assert om.endswith("# EOF\n") and "# EOF" not in text
