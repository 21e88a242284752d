"""Read replicas on a real primary and streaming standbys (tests/pg_cluster.py): reads routed to
a standby, read-your-writes while its replay is paused, lag in both metrics endpoints, and the
primary serving reads when a standby lags too far, is stopped, or is not there at all."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from app_support import Api, Tenant, expense
from idempotency_support import private_redis

from pg_cluster import PostgresCluster, free_port, pg_bin
from streamcore_server import accounts, storage
from streamcore_server.auth import Principal
from streamcore_server.main import create_app
from streamcore_server.replicas import TOKEN_HEADER
from streamcore_server.settings import Settings

AGG = "/v1/system/metrics/aggregated"
PROM = "/v1/system/metrics/prometheus"
LIST = "/v1/finance/expenses"
T = TypeVar("T")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One primary and two standbys for this module's tests, migrated, removed after them."""
    if pg_bin() is None:
        message = "PostgreSQL server binaries (initdb, pg_basebackup) are not installed"
        if os.environ.get("STREAMCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    cluster = PostgresCluster(standbys=2)

    async def migrate() -> None:
        engine = storage.create_engine(cluster.primary.url())
        await storage.migrate(engine)
        await engine.dispose()

    try:
        asyncio.run(migrate())
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(pg_cluster: PostgresCluster) -> PostgresCluster:
    """The session's cluster with empty tables and every standby running, replaying, caught up."""
    for standby in pg_cluster.standbys:
        if not standby.running():
            standby.start()
        standby.sql("SELECT pg_wal_replay_resume()")
    tables = ", ".join(t.name for t in storage.metadata.sorted_tables)
    pg_cluster.primary.sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    for standby in pg_cluster.standbys:
        pg_cluster.wait_caught_up(standby)
    return pg_cluster


def poll(check: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Call check until it returns something truthy, failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def start(api_factory: Any, cluster: PostgresCluster, *standbys: str, **overrides: Any) -> Api:
    overrides.setdefault("database_replica_max_lag_s", 60.0)
    overrides.setdefault("read_your_writes_ttl_s", 120.0)
    api: Api = api_factory(
        cluster.primary.url(), database_replica_urls=tuple(standbys), **overrides
    )
    return api


def colleague(api: Api, tenant: Tenant, name: str) -> Tenant:
    """A second user of the tenant's org, who has written nothing."""

    async def create() -> int:
        async with api.app.state.db.begin() as conn:
            return await accounts.create_user(
                conn, tenant.org_id, f"{name}@example.com", "correct horse battery"
            )

    user = int(api.run(create))
    email = f"{name}@example.com"
    token = api.app.state.tokens.issue(Principal(user, tenant.org_id, email))
    return Tenant(tenant.org_id, user, email, tenant.property_id, token)


def write(api: Api, t: Tenant, cents: int) -> str:
    r = api.client.post("/v1/finance/expenses", json=expense(t, amountCents=cents), headers=t.auth)
    assert r.status_code == 201, r.text
    return r.headers[TOKEN_HEADER]


def amounts(api: Api, t: Tenant, token: str | None = None) -> list[int]:
    headers = {**t.auth, **({TOKEN_HEADER: token} if token else {})}
    r = api.client.get(LIST, headers=headers)
    assert r.status_code == 200, r.text
    return [item["amountCents"] for item in r.json()["items"]]


def database(api: Api) -> dict[str, Any]:
    r = api.client.get(AGG)
    assert r.status_code == 200, r.text
    db: dict[str, Any] = r.json()["database"]
    return db


def replica(api: Api, name_port: int) -> dict[str, Any]:
    statuses = database(api)["replicas"]
    return next(s for s in statuses if s["name"].startswith(f"127.0.0.1:{name_port}/"))


def prometheus(api: Api, family: str, port: int) -> float | None:
    for line in api.client.get(PROM).text.splitlines():
        if line.startswith(f"streamcore_{family}{{") and f":{port}/" in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_writer_reads_its_writes_while_the_standby_replay_is_paused(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    writer = api.tenant("Writer")
    reader = colleague(api, writer, "reader")
    write(api, writer, 100)
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    token = write(api, writer, 200)

    # Someone who did not write reads the paused standby: it is really serving, and behind.
    assert amounts(api, reader) == [100]
    # The writer sees its write: with the token it got, and without it (its floor, per user).
    assert amounts(api, writer, token) == [200, 100]
    assert amounts(api, writer) == [200, 100]
    # A summary the cache misses is routed the same way; the stale one is not cached.
    summary = {"propertyId": writer.property_id}
    r = api.client.get("/v1/finance/summary", params=summary, headers=reader.auth)
    assert r.json()["totals"][0]["expensesCents"] == 100
    r = api.client.get("/v1/finance/summary", params=summary, headers=writer.auth)
    assert r.json()["totals"][0]["expensesCents"] == 300
    routed = database(api)["routed_reads"]
    assert routed["fallbacks"]["behind"] == 3 and routed["replica"] == 2

    # Once replayed, the same token is served by the standby.
    standby.sql("SELECT pg_wal_replay_resume()")
    cluster.wait_caught_up(standby)
    assert amounts(api, writer, token) == [200, 100]
    routed = database(api)["routed_reads"]
    assert routed["replica"] == 3 and routed["fallbacks"]["behind"] == 3


def test_the_lag_is_positive_while_replay_is_paused_and_zero_after(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    t = api.tenant("Lag")
    poll(lambda: replica(api, standby.port)["lag_bytes"] == 0, "the standby to be caught up")
    standby.sql("SELECT pg_wal_replay_pause()")
    write(api, t, 100)
    paused = poll(
        lambda: (s := replica(api, standby.port))["lag_bytes"] > 0 and s["lag_s"] > 0 and s,
        "a lag while paused",
    )
    assert paused["up"] is True
    assert database(api)["replica_lag_s"] > 0
    assert prometheus(api, "db_replica_lag_bytes", standby.port) > 0  # type: ignore[operator]
    assert prometheus(api, "db_replica_lag_seconds", standby.port) > 0  # type: ignore[operator]
    assert prometheus(api, "db_replica_up", standby.port) == 1

    standby.sql("SELECT pg_wal_replay_resume()")
    poll(
        lambda: (s := replica(api, standby.port))["lag_bytes"] == 0 and s["lag_s"] == 0,
        "the lag to return to 0",
    )
    assert database(api)["replica_lag_s"] == 0
    assert prometheus(api, "db_replica_lag_bytes", standby.port) == 0
    assert prometheus(api, "db_replica_lag_seconds", standby.port) == 0


def test_a_standby_lagging_past_the_maximum_serves_no_read(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(
        api_factory,
        cluster,
        standby.url(),
        database_replica_max_lag_s=0.5,
        read_your_writes_ttl_s=1.0,
    )
    writer = api.tenant("Stale")
    reader = colleague(api, writer, "stale-reader")
    write(api, writer, 100)
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    write(api, writer, 200)
    poll(lambda: (replica(api, standby.port)["lag_s"] or 0) > 0.5, "a lag above the maximum")
    assert amounts(api, reader) == [200, 100]  # the primary's answer, not the standby's
    assert database(api)["routed_reads"]["fallbacks"]["lag"] >= 1
    assert "no standby answers" not in database(api).get("replica_reason", "")


def test_a_stopped_standby_sends_reads_to_the_primary_without_errors(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    t = api.tenant("Down")
    write(api, t, 100)
    cluster.wait_caught_up(standby)
    assert amounts(api, t) == [100]
    standby.stop()
    for _ in range(20):
        assert amounts(api, t) == [100]
    write(api, t, 200)  # writes never depended on it
    assert amounts(api, t) == [200, 100]
    assert api.client.get("/readyz").status_code == 200
    poll(lambda: not replica(api, standby.port)["up"], "the probe to see the standby down")
    db = database(api)
    assert db["routed_reads"]["fallbacks"]["down"] >= 20
    assert db["replica_lag_s"] is None and "no standby answers" in db["replica_reason"]
    assert prometheus(api, "db_replica_up", standby.port) == 0
    five_xx = [ln for ln in api.client.get(PROM).text.splitlines() if 'status_class="5xx"' in ln]
    assert five_xx == []

    standby.start()
    poll(lambda: replica(api, standby.port)["up"], "the probe to see the standby again")
    served = replica(api, standby.port)["reads"]
    token = write(api, t, 300)
    cluster.wait_caught_up(standby)
    assert amounts(api, t, token) == [300, 200, 100]
    assert replica(api, standby.port)["reads"] == served + 1


def test_the_least_lagging_standby_serves_and_a_failing_one_is_skipped(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    behind, current = cluster.standbys
    nowhere = free_port()
    unreachable = f"postgresql+asyncpg://postgres@127.0.0.1:{nowhere}/streamcore"
    api = start(api_factory, cluster, unreachable, behind.url(), current.url())
    writer = api.tenant("Many")
    reader = colleague(api, writer, "many-reader")
    write(api, writer, 100)
    cluster.wait_caught_up(behind)
    behind.sql("SELECT pg_wal_replay_pause()")
    write(api, writer, 200)
    cluster.wait_caught_up(current)
    poll(
        lambda: (
            replica(api, behind.port)["lag_bytes"] > 0
            and replica(api, current.port)["lag_bytes"] == 0
        ),
        "the probe to see one standby behind and one current",
    )
    assert amounts(api, reader) == [200, 100]
    assert replica(api, current.port)["reads"] == 1 and replica(api, behind.port)["reads"] == 0
    dead = replica(api, nowhere)
    assert dead["up"] is False and dead["reads"] == 0

    # The current one fails: the read moves on to the next, which is behind but within the
    # maximum lag, so someone who did not write may read it; the writer goes to the primary.
    current.stop()
    assert amounts(api, reader) == [100]
    assert replica(api, behind.port)["reads"] == 1
    assert amounts(api, writer) == [200, 100]
    assert database(api)["routed_reads"]["fallbacks"]["behind"] == 1


@pytest.mark.redis
def test_a_users_floor_reaches_every_worker_through_redis(
    cluster: PostgresCluster, api_factory: Any, redis_url: str
) -> None:
    standby = cluster.standbys[0]
    shared = {"redis_url": redis_url, "metrics_redis_prefix": f"test:{uuid.uuid4().hex[:8]}"}
    one = start(api_factory, cluster, standby.url(), **shared)
    other = start(api_factory, cluster, standby.url(), **shared)  # a second worker
    writer = one.tenant("Workers")
    reader = colleague(one, writer, "workers-reader")
    write(one, writer, 100)
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    write(one, writer, 200)  # on the first worker, without handing the token on
    assert amounts(other, writer) == [200, 100]
    assert amounts(other, reader) == [100]


def test_a_malformed_token_is_a_400(cluster: PostgresCluster, api_factory: Any) -> None:
    api = start(api_factory, cluster, cluster.standbys[0].url())
    t = api.tenant("Bad")
    r = api.client.get(LIST, headers={**t.auth, TOKEN_HEADER: "not-an-lsn"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_consistency_token"


def test_without_replicas_nothing_changes(api_factory: Any, sqlite_url: str) -> None:
    api: Api = api_factory(sqlite_url)
    t = api.tenant("Alone")
    r = api.client.post("/v1/finance/expenses", json=expense(t), headers=t.auth)
    assert r.status_code == 201 and TOKEN_HEADER not in r.headers
    assert amounts(api, t, "0/0") == [expense(t)["amountCents"]]
    assert "streamcore_db_routed_reads" not in api.client.get(PROM).text
    assert "routed_reads" not in database(api)


def test_the_openapi_document_names_the_token_only_with_replicas(tmp_path: Path) -> None:
    pg = "postgresql+asyncpg://postgres@127.0.0.1:5432/app"
    with_replicas = Settings(database_url=pg, database_replica_urls=(pg,), data_dir=str(tmp_path))
    for settings, present in ((with_replicas, True), (Settings(data_dir=str(tmp_path)), False)):
        paths = create_app(settings).state.openapi["paths"]
        for path in (LIST, "/v1/finance/summary"):
            get = paths[path]["get"]
            names = [p["name"] for p in get.get("parameters", [])]
            assert (TOKEN_HEADER in names) is present
            assert (
                "invalid_consistency_token"
                in get["responses"].get("400", {}).get("description", "")
            ) is present
        created = paths[LIST]["post"]["responses"]["201"]
        assert (TOKEN_HEADER in created.get("headers", {})) is present
        assert TOKEN_HEADER not in str(paths["/v2/realtime/publish"])


def test_a_property_the_standby_has_not_replayed_is_asked_of_the_primary(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    t = api.tenant("Fresh")
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    new = api.add_property(t, "New House")  # made by the CLI's code: no token, no floor
    r = api.client.get(LIST, params={"propertyId": new}, headers=t.auth)
    assert r.status_code == 200 and r.json()["items"] == []
    r = api.client.get(LIST, params={"propertyId": 10**6}, headers=t.auth)
    assert r.status_code == 404  # the primary's answer too
    assert database(api)["routed_reads"]["fallbacks"]["not_found"] == 2


def test_when_redis_cannot_tell_a_floor_reads_go_to_the_primary(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    with private_redis() as redis_server:
        api = start(api_factory, cluster, standby.url(), redis_url=redis_server.url)
        writer = api.tenant("Blind")
        reader = colleague(api, writer, "blind-reader")
        write(api, writer, 100)
        cluster.wait_caught_up(standby)
        standby.sql("SELECT pg_wal_replay_pause()")
        redis_server.stop()  # another worker's write could no longer be known
        write(api, writer, 200)
        assert amounts(api, reader) == [200, 100]  # the primary's: no 5xx, nothing stale
        assert database(api)["routed_reads"]["fallbacks"]["floor_unknown"] >= 1


def test_a_hung_standby_costs_a_read_a_bounded_wait_then_none(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    t = api.tenant("Hung")
    reader = colleague(api, t, "hung-reader")
    write(api, t, 100)
    cluster.wait_caught_up(standby)
    assert amounts(api, reader) == [100]  # a pooled connection to the standby now exists
    standby.hang()
    try:
        started = time.monotonic()
        assert amounts(api, reader) == [100]
        first = time.monotonic() - started
        poll(lambda: not replica(api, standby.port)["up"], "the probe to see the standby hung")
        started = time.monotonic()
        for _ in range(5):
            assert amounts(api, reader) == [100]
        rest = time.monotonic() - started
    finally:
        standby.resume()
    assert first < storage.REPLICA_READ_TIMEOUT_S + 5
    assert rest < storage.REPLICA_READ_TIMEOUT_S  # marked down: no read waits for it again
    assert database(api)["routed_reads"]["fallbacks"]["down"] >= 5
    # The probes were bounded too, so they see it come back.
    poll(lambda: replica(api, standby.port)["up"], "the probe to see the standby again")
    served = replica(api, standby.port)["reads"]
    assert amounts(api, reader) == [100]
    assert replica(api, standby.port)["reads"] == served + 1


def test_with_an_edge_the_whole_org_reads_a_write_while_the_standby_replay_is_paused(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    # The edge keys a copy on the verified org alone: what a colleague's read stores there is
    # what the writer reads next, Consistency-Token or not. So with an edge, a read after any
    # write of the org must not come from a standby that has not replayed it.
    standby = cluster.standbys[0]
    nowhere = f"http://127.0.0.1:{free_port()}"  # purges fail and are retried; writes still 201
    api = start(
        api_factory, cluster, standby.url(), edge_provider="varnish", edge_purge_urls=(nowhere,)
    )
    writer = api.tenant("Edged")
    reader = colleague(api, writer, "edged-reader")
    outsider = api.tenant("Elsewhere")
    write(api, writer, 100)
    write(api, outsider, 5)
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    write(api, writer, 200)

    assert amounts(api, reader) == [200, 100]  # the primary's: the standby is behind the org
    summary = {"propertyId": writer.property_id}
    r = api.client.get("/v1/finance/summary", params=summary, headers=reader.auth)
    assert r.json()["totals"][0]["expensesCents"] == 300
    assert amounts(api, outsider) == [5]  # another org's reads still go to the standby
    routed = database(api)["routed_reads"]
    assert routed["replica"] == 1 and routed["fallbacks"]["behind"] >= 1


def test_auth_writes_and_idempotency_never_read_a_standby(
    cluster: PostgresCluster, api_factory: Any
) -> None:
    # What the paused standby does not have yet: a user, a property, an idempotency record.
    # Each is read where it was written, or the login, the write or the replay would fail.
    standby = cluster.standbys[0]
    api = start(api_factory, cluster, standby.url())
    t = api.tenant("Primary")
    cluster.wait_caught_up(standby)
    standby.sql("SELECT pg_wal_replay_pause()")
    newcomer = colleague(api, t, "newcomer")
    house = api.add_property(t, "Unreplayed House")

    login = {"email": newcomer.email, "password": "correct horse battery"}
    r = api.client.post("/auth/login", json=login)
    assert r.status_code == 200, r.text
    token = r.json()["accessToken"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-unreplayed"}
    body = expense(t, propertyId=house, amountCents=4321)
    first = api.client.post("/v1/finance/expenses", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = api.client.post("/v1/finance/expenses", json=body, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())  # replayed, not re-run
    assert cluster.lsn_behind(standby) > 0  # still paused: none of it could have been replayed
    assert database(api)["routed_reads"]["replica"] == 0  # nothing above asked the router
