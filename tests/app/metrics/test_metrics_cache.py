"""The finance summary's read-through cache: L1, L2 (Redis), L3 (database), invalidated by
writes, with hits and misses reported per level as they happened."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from app_support import Api, Tenant

AGG = "/v1/system/metrics/aggregated"


def expense(api: Api, t: Tenant, cents: int) -> None:
    body = {
        "propertyId": t.property_id,
        "category": "maintenance",
        "amountCents": cents,
        "currency": "INR",
        "expenseDate": "2025-12-13T10:00:00Z",
        "paymentMode": "cash",
    }
    r = api.client.post("/v1/finance/expenses", json=body, headers=t.auth)
    assert r.status_code == 201, r.text


def spent(api: Api, t: Tenant) -> int:
    r = api.client.get("/v1/finance/summary", params={"propertyId": t.property_id}, headers=t.auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return sum(x["expensesCents"] for x in r.json()["totals"])


def cache(api: Api) -> dict[str, Any]:
    return api.client.get(AGG).json()["cache"]  # type: ignore[no-any-return]


def test_l1_then_database_and_writes_invalidate(sqlite_api: Api) -> None:
    t = sqlite_api.tenant("Acme")
    expense(sqlite_api, t, 100)
    assert spent(sqlite_api, t) == 100  # L1 miss -> database
    assert spent(sqlite_api, t) == 100  # L1 hit
    expense(sqlite_api, t, 50)
    assert spent(sqlite_api, t) == 150  # the write invalidated L1: database again
    c = cache(sqlite_api)
    assert c["l1"] == {"hits": 1, "misses": 2, "hit_ratio": 1 / 3}
    assert c["l2"] is None and c["l2_reason"]
    assert c["l3"]["hits"] == 2
    assert c["hit_ratio"] == pytest.approx(1 / 3)
    slo = {s["name"]: s for s in sqlite_api.client.get(AGG).json()["slo"]}
    assert slo["cache_hit_ratio"]["current"] == pytest.approx(1 / 3)
    assert slo["cache_hit_ratio"]["met"] is False


def test_another_org_never_reads_a_cached_summary(sqlite_api: Api) -> None:
    a = sqlite_api.tenant("Acme")
    b = sqlite_api.tenant("Bravo")
    expense(sqlite_api, a, 100)
    assert spent(sqlite_api, a) == 100
    r = sqlite_api.client.get(
        "/v1/finance/summary", params={"propertyId": a.property_id}, headers=b.auth
    )
    assert r.status_code == 404


@pytest.mark.redis
def test_l2_is_shared_between_processes_and_invalidated(
    api_factory: Any, sqlite_url: str, redis_url: str
) -> None:
    prefix = f"test:metrics:{uuid.uuid4().hex[:10]}"
    settings = {
        "redis_url": redis_url,
        "metrics_redis_prefix": prefix,
        "realtime_redis_prefix": f"{prefix}:rt",
        "idempotency_redis_prefix": f"{prefix}:idem:",
    }
    a: Api = api_factory(sqlite_url, **settings)
    b: Api = api_factory(sqlite_url, **settings)
    t = a.tenant("Acme")
    expense(a, t, 100)
    assert spent(a, t) == 100  # a: L1 miss, L2 miss, database; stored in L2
    assert spent(b, t) == 100  # b: L1 miss, L2 hit
    expense(a, t, 25)  # bumps the version in Redis
    assert spent(b, t) == 125  # b: L1 miss, L2 miss (new version), database
    assert spent(a, t) == 125  # a: its L1 was invalidated locally; L2 hit (b stored it)
    assert spent(b, t) == 125  # b: the version did not move, L1 hit
    ca = a.app.state.summary_cache.counters()
    cb = b.app.state.summary_cache.counters()
    assert (ca["cache_l1_misses"], ca["cache_l2_hits"], ca["cache_l2_misses"]) == (2, 1, 1)
    assert (cb["cache_l1_misses"], cb["cache_l2_hits"], cb["cache_l2_misses"]) == (2, 1, 1)
    assert ca["cache_l3_hits"] == 1 and cb["cache_l3_hits"] == 1
    assert (ca["cache_l1_hits"], cb["cache_l1_hits"]) == (0, 1)
    b.run(b.app.state.metrics_publisher.publish)  # now, not at its next interval
    merged = a.client.get(AGG).json()["cache"]  # a's own counters and b's published ones
    assert merged["l2"] == {"hits": 2, "misses": 2, "hit_ratio": 0.5}
    assert merged["l1"]["hits"] == 1 and merged["l3"]["hits"] == 2


def test_without_redis_answering_the_summary_is_still_right(
    api_factory: Any, sqlite_url: str
) -> None:
    api: Api = api_factory(sqlite_url, redis_url="redis://127.0.0.1:1/0")  # nothing listens
    t = api.tenant("Acme")
    expense(api, t, 100)
    assert spent(api, t) == 100
    expense(api, t, 1)
    assert spent(api, t) == 101
    stats = api.app.state.summary_cache.stats
    assert stats.l2_errors >= 1 and stats.l3_hits == 2
