"""The purge counters in both exposition formats and in the aggregated JSON."""

from __future__ import annotations

from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

PROM = "/v1/system/metrics/prometheus"


def test_purge_counters_are_exported(api_factory: Any, sqlite_url: str) -> None:
    # Port 9 on loopback: nothing is sent there, since this test writes nothing.
    api = api_factory(sqlite_url, edge_provider="varnish", edge_purge_urls=("http://127.0.0.1:9",))
    text = api.client.get(PROM).text
    names = {f.name for f in parse_text(text)}
    assert {"streamcore_edge_purge_requests", "streamcore_edge_purge_failed"} <= names
    assert "streamcore_edge_purge_backlog" in names
    om = api.client.get(PROM, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert "streamcore_edge_purge_retries" in {f.name for f in parse_openmetrics(om.text)}
    edge = api.client.get("/v1/system/metrics/aggregated").json()["edge"]
    assert edge["purge_requests"] == 0 and edge["purge_backlog"] == 0


def test_no_edge_no_purge_counters(api: Any) -> None:
    assert "edge_purge" not in api.client.get(PROM).text
    assert api.client.get("/v1/system/metrics/aggregated").json()["edge"] == {}
