"""The finance summary's read-through cache: L1, L2 (Redis), L3 (database), invalidated by
writes, with hits and misses reported per level as they happened."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from app_support import Api, Tenant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamcore_server.auth import Principal
from streamcore_server.finance import SummaryQuery, summarise
from streamcore_server.responses import OrjsonResponse

AGG = "/v1/system/metrics/aggregated"


async def summarise_on_primary(
    api: Api, who: Principal, query: SummaryQuery
) -> tuple[int | None, dict[str, Any]]:
    async with api.app.state.db.connect() as conn:
        return await summarise(conn, who, query)


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


def test_l1_then_database_and_writes_move_cached_summaries_on(sqlite_api: Api) -> None:
    t = sqlite_api.tenant("Acme")
    expense(sqlite_api, t, 100)
    assert spent(sqlite_api, t) == 100  # L1 miss -> database
    assert spent(sqlite_api, t) == 100  # L1 hit
    expense(sqlite_api, t, 50)
    assert spent(sqlite_api, t) == 150  # the write applied itself to the cached summary: L1 hit
    c = cache(sqlite_api)
    assert c["l1"] == {"hits": 2, "misses": 1, "hit_ratio": 2 / 3}
    assert c["l2"] is None and c["l2_reason"]
    assert c["l3"]["hits"] == 1
    assert c["hit_ratio"] == pytest.approx(2 / 3)
    slo = {s["name"]: s for s in sqlite_api.client.get(AGG).json()["slo"]}
    assert slo["cache_hit_ratio"]["current"] == pytest.approx(2 / 3)
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
    assert spent(a, t) == 100  # a: L1 miss, L2 miss, database; stored in L2 at version 1
    assert spent(b, t) == 100  # b: L1 miss, L2 hit
    expense(a, t, 25)  # version 2: a moves its summary on and stores it in L2 under 2
    assert spent(b, t) == 125  # b: its L1 entry is a version behind; L2 hit
    assert spent(a, t) == 125  # a: L1 hit
    assert spent(b, t) == 125  # b: the version did not move, L1 hit
    expense(b, t, 1)  # version 3, written by b: b moves its summary on
    expense(b, t, 2)  # version 4
    assert spent(a, t) == 128  # a: two writes behind, so not moved on; L2 hit (b's)
    ca = a.app.state.summary_cache.counters()
    cb = b.app.state.summary_cache.counters()
    assert (ca["cache_l1_hits"], ca["cache_l1_misses"]) == (1, 2)
    assert (ca["cache_l2_hits"], ca["cache_l2_misses"], ca["cache_l3_hits"]) == (1, 1, 1)
    assert (cb["cache_l1_hits"], cb["cache_l1_misses"]) == (1, 2)
    assert (cb["cache_l2_hits"], cb["cache_l2_misses"], cb["cache_l3_hits"]) == (2, 0, 0)
    b.run(b.app.state.metrics_publisher.publish)  # now, not at its next interval
    merged = a.client.get(AGG).json()["cache"]  # a's own counters and b's published ones
    assert merged["l2"] == {"hits": 3, "misses": 1, "hit_ratio": 0.75}
    assert merged["l1"]["hits"] == 2 and merged["l3"]["hits"] == 1


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
    assert stats.l2_errors >= 1 and (stats.l3_hits, stats.l1_hits) == (1, 1)


PERIODS = {
    "all": {},
    "december": {"from": "2025-12-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    "from 13 Dec 10:00": {"from": "2025-12-13T10:00:00Z"},
    "before 13 Dec 10:00": {"to": "2025-12-13T10:00:00Z"},
}
DATES = [  # around the periods' edges
    "2025-11-30T23:59:59Z",
    "2025-12-13T09:59:59Z",
    "2025-12-13T10:00:00Z",
    "2026-01-01T00:00:00Z",
]
writes = st.tuples(
    st.sampled_from(["expenses", "revenues"]),
    st.sampled_from(["INR", "USD", "EUR"]),
    st.integers(1, 10**9),
    st.sampled_from(DATES),
)
steps = st.lists(st.one_of(writes, st.sampled_from(sorted(PERIODS))), min_size=1, max_size=25)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps)
def test_cached_summaries_moved_on_by_writes_equal_the_database(api: Api, plan: list[Any]) -> None:
    """Random writes and reads: every summary served equals the one computed without the cache."""
    t = api.tenant(f"T{uuid.uuid4().hex[:8]}")
    for step in plan:
        if isinstance(step, tuple):
            kind, currency, cents, date = step
            field = "expenseDate" if kind == "expenses" else "revenueDate"
            body = {
                "propertyId": t.property_id,
                "category": "maintenance" if kind == "expenses" else "rent",
                "amountCents": cents,
                "currency": currency,
                field: date,
                "paymentMode": "cash",
            }
            r = api.client.post(f"/v1/finance/{kind}", json=body, headers=t.auth)
            assert r.status_code == 201, r.text
            continue
        params = {"propertyId": t.property_id, **PERIODS[step]}
        served = api.client.get("/v1/finance/summary", params=params, headers=t.auth)
        assert served.status_code == 200, served.text
        query = SummaryQuery.model_validate(params)
        who = Principal(t.user_id, t.org_id, t.email)
        _, truth = api.run(summarise_on_primary, api, who, query)
        assert served.content == OrjsonResponse(truth).body, step


def test_a_summary_is_never_moved_past_a_write_it_did_not_see() -> None:
    """Writes can announce out of order (v2 before v1): a summary at v0 is dropped, not patched."""
    import asyncio
    import datetime as dt

    from streamcore_server.cache import SummaryCache, Write

    def patch(body: bytes, write: Write) -> bytes:
        return b"%d" % (int(body) + write.amount_cents)

    async def scenario() -> list[bytes]:
        cache = SummaryCache(None, "t", "sqlite://", patch)
        db = {"version": 0, "total": 0}

        async def compute() -> tuple[int | None, bytes]:
            return db["version"], b"%d" % db["total"]

        def write(version: int, cents: int) -> Write:
            return Write(version, "expense", "INR", cents, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))

        served = [await cache.get(1, 1, "all", compute)]  # computed at v0: 0
        db.update(version=2, total=30)  # two writes commit: +10 (v1) and +20 (v2)
        await cache.apply(1, write(2, 20))  # v2 announces first: v0 is two writes behind
        await cache.apply(1, write(1, 10))
        served.append(await cache.get(1, 1, "all", compute))
        await cache.apply(1, write(3, 5))  # in order: moved on, no query
        db.update(version=3, total=35)
        served.append(await cache.get(1, 1, "all", compute))
        assert (cache.stats.l3_hits, cache.stats.l1_hits) == (2, 1)
        return served

    assert asyncio.run(scenario()) == [b"0", b"30", b"35"]
