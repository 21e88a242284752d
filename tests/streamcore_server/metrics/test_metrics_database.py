"""The database block: pools, and why a replica's lag cannot be measured (none configured, or
a URL naming a primary). Lag, routing and fallback on a real standby:
tests/streamcore_server/test_replicas.py."""

from __future__ import annotations

from typing import Any

import pytest
from test_metrics_cache import expense, spent

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"


def test_without_a_replica_the_lag_is_null_with_a_reason(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url)
    db = api.client.get(AGG).json()["database"]
    assert db["replica_lag_s"] is None
    assert "DATABASE_REPLICA_URL" in db["replica_reason"]
    assert "replica_pool" not in db


@pytest.mark.postgres
def test_a_replica_url_naming_a_primary_is_not_a_lag(api_factory: Any, pg_database: str) -> None:
    api = api_factory(pg_database, database_replica_urls=(pg_database,))
    t = api.tenant("Acme")
    expense(api, t, 100)
    assert spent(api, t) == 100  # from the primary: the "replica" is not a standby
    r = api.client.get("/v1/finance/expenses", headers=t.auth)
    assert r.status_code == 200 and len(r.json()["items"]) == 1
    db = api.client.get(AGG).json()["database"]
    assert db["replica_lag_s"] is None
    assert "not in recovery" in db["replica_reason"]
    assert db["replicas"][0]["up"] is False
    assert db["routed_reads"]["replica"] == 0 and db["routed_reads"]["fallbacks"]["down"] >= 1
    assert db["pool"]["size"] == 20 and db["replica_pool"]["size"] == 10  # storage.py
