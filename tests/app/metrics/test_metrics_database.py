"""The database block: pools, a read replica's lag (or why it cannot be measured), list reads
routed to DATABASE_REPLICA_URL while summaries stay on the primary."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_metrics_cache import expense, spent

from app import storage

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"


def migrated_sqlite(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"

    async def run() -> None:
        engine = storage.create_engine(url)
        await storage.migrate(engine)
        await engine.dispose()

    asyncio.run(run())
    return url


def test_lists_read_the_replica_and_summaries_the_primary(
    api_factory: Any, sqlite_url: str, tmp_path: Path
) -> None:
    # A migrated, empty database standing in for a replica that has not caught up.
    replica_url = migrated_sqlite(tmp_path / "replica.db")
    api = api_factory(sqlite_url, database_replica_url=replica_url)
    t = api.tenant("Acme")
    expense(api, t, 100)
    r = api.client.get("/v1/finance/expenses", headers=t.auth)
    assert r.status_code == 200 and r.json()["items"] == []  # the replica's view
    assert spent(api, t) == 100  # the primary's
    db = api.client.get(AGG).json()["database"]
    assert db["replica_lag_s"] is None and "sqlite" in db["replica_reason"]
    assert db["replica_pool"]["size"] >= 1
    assert "streamcore_db_replica_pool_size" in api.client.get(PROM).text
    assert api.client.get("/readyz").json()["checks"]["database_replica"] == "ok"


def test_without_a_replica_the_lag_is_null_with_a_reason(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url)
    db = api.client.get(AGG).json()["database"]
    assert db["replica_lag_s"] is None
    assert "DATABASE_REPLICA_URL" in db["replica_reason"]
    assert "replica_pool" not in db


@pytest.mark.postgres
def test_a_replica_url_naming_a_primary_is_not_a_lag(api_factory: Any, pg_database: str) -> None:
    api = api_factory(pg_database, database_replica_url=pg_database)
    db = api.client.get(AGG).json()["database"]
    assert db["replica_lag_s"] is None
    assert "not in recovery" in db["replica_reason"]
    assert db["pool"]["size"] == 10 and db["replica_pool"]["size"] == 10
