"""No duplicate when things fail: Redis stopped, hung or flushed; crashes after the commit;
restarts; a handler that outlives its lease. Real Redis servers, real databases."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from app_support import Api, expense
from idempotency_support import (
    PATH,
    PrivateRedis,
    delete_prefix,
    keyed,
    new_key,
    private_redis,
    rows,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient
from waiting import eventually

from streamcore_server import auth, finance, idempotency, storage
from streamcore_server.errors import EXCEPTION_HANDLERS
from streamcore_server.events import EventBus
from streamcore_server.main import create_app
from streamcore_server.middleware.idempotency import IdempotencyMiddleware
from streamcore_server.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def test_redis_flushed_between_request_and_retry(
    api_factory: Any, database_url: str, redis_server: PrivateRedis
) -> None:
    api = api_factory(database_url, redis_url=redis_server.url)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    first = api.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201
    redis_server.client().flushall()  # our own server: a failover or eviction lost the key
    retry = api.client.post(PATH, json=expense(a), headers=headers)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert api.app.state.idempotency_stats.backstop_hits == 1
    # Still a conflict, answered from the database record, when the body differs.
    redis_server.client().flushall()
    other = api.client.post(PATH, json=expense(a, amountCents=1), headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert rows(api) == 1


def test_every_retry_after_redis_lost_its_keys_is_the_stored_response(
    api_factory: Any, database_url: str, redis_server: PrivateRedis
) -> None:
    # The collision with the database record must not leave this retry's claim in Redis, where
    # every later retry would read "in progress" until the lease ran out, again and again.
    api = api_factory(database_url, redis_url=redis_server.url)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    first = api.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201
    redis_server.client().flushall()
    for _ in range(3):
        retry = api.client.post(PATH, json=expense(a), headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.content == first.content
    assert rows(api) == 1
    # Redis holds the stored response again, so the next retries cost no handler run.
    assert api.app.state.idempotency_stats.backstop_hits == 1


def test_a_response_gone_from_redis_after_its_ttl_is_still_replayed_from_the_database(
    api_factory: Any, database_url: str, redis_server: PrivateRedis
) -> None:
    api = api_factory(database_url, redis_url=redis_server.url, idempotency_redis_ttl_s=1)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    first = api.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201
    client = redis_server.client()
    (key,) = client.keys("*idem*")
    assert 0 < client.pttl(key) <= 1000  # the Redis TTL, not the database's 24 h
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(key)
    retry = api.client.post(PATH, json=expense(a), headers=headers)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert api.app.state.idempotency_stats.backstop_hits == 1
    assert rows(api) == 1


def test_redis_stopped_between_request_and_retry(
    api_factory: Any, sqlite_url: str, redis_server: PrivateRedis, caplog: Any
) -> None:
    api = api_factory(sqlite_url, redis_url=redis_server.url)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    first = api.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="streamcore_server.idempotency"):
        for _ in range(3):
            retry = api.client.post(PATH, json=expense(a), headers=headers)
            assert retry.status_code == 201
            assert retry.headers["idempotent-replayed"] == "true"
            assert retry.content == first.content
        fresh = api.client.post(PATH, json=expense(a, amountCents=3), headers=keyed(a, new_key()))
        assert fresh.status_code == 201  # new writes go on, claimed in the database
        again = api.client.post(PATH, json=expense(a, amountCents=3), headers=fresh.request.headers)
        assert again.headers["idempotent-replayed"] == "true"
    assert rows(api) == 2
    stats = api.app.state.idempotency_stats
    assert stats.redis_errors >= 1
    assert stats.redis_fallbacks >= 4
    unavailable = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(unavailable) == 1  # once per incident, not per request


def test_redis_hung_between_request_and_retry(
    api_factory: Any, database_url: str, redis_server: PrivateRedis
) -> None:
    api = api_factory(database_url, redis_url=redis_server.url, idempotency_redis_timeout_ms=50)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    first = api.client.post(PATH, json=expense(a), headers=headers)
    assert first.status_code == 201
    redis_server.hang()
    try:
        started = time.monotonic()
        retry = api.client.post(PATH, json=expense(a), headers=headers)
        took = time.monotonic() - started
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert took < 1.0  # one short timeout, then the database answers
        stats = api.app.state.idempotency_stats
        errors, fallbacks = stats.redis_errors, stats.redis_fallbacks
        started = time.monotonic()
        fresh = api.client.post(PATH, json=expense(a, amountCents=2), headers=keyed(a, new_key()))
        assert fresh.status_code == 201
        # Inside the incident the claim goes straight to the database (no new claim error).
        # The write's wall time also holds other layers' Redis timeouts, so only the claim is
        # checked; its cache write afterwards may try Redis again once the second has passed.
        assert stats.redis_fallbacks == fallbacks + 1
        if time.monotonic() - started < 0.9:
            assert stats.redis_errors == errors
    finally:
        redis_server.resume()
    assert rows(api) == 2
    assert api.app.state.idempotency_stats.redis_errors >= 1


def test_a_retry_during_an_outage_of_a_request_made_during_it_is_not_a_duplicate(
    api_factory: Any, sqlite_url: str, redis_server: PrivateRedis
) -> None:
    api = api_factory(sqlite_url, redis_url=redis_server.url)
    a = api.tenant("Acme")
    headers = keyed(a, new_key())
    redis_server.hang()
    try:
        assert api.client.post(PATH, json=expense(a), headers=headers).status_code == 201
    finally:
        redis_server.resume()
    # Past the fallback window Redis is tried again, and it knows nothing of the request.
    eventually(api.app.state.idempotency._usable, "the Redis breaker to close")
    retry = api.client.post(PATH, json=expense(a), headers=headers)
    assert retry.headers["idempotent-replayed"] == "true"
    assert rows(api) == 1


def test_replays_survive_a_restart(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    for store in ("embedded", "redis"):
        overrides: dict[str, Any] = {}
        prefix = f"test:idem:{uuid.uuid4().hex}:"
        if store == "redis":
            overrides = {
                "redis_url": request.getfixturevalue("redis_url"),
                "idempotency_redis_prefix": prefix,
            }
        settings = Settings(database_url=database_url, data_dir=str(tmp_path / "var"), **overrides)
        key = new_key()
        try:
            with TestClient(create_app(settings)) as client:
                api = Api(client)
                a = api.tenant(f"Acme{store}")
                body = expense(a, amountCents=11)
                first = client.post(PATH, json=body, headers=keyed(a, key))
                assert first.status_code == 201
            with TestClient(create_app(settings)) as client:
                retry = client.post(PATH, json=body, headers=keyed(a, key))
                assert retry.status_code == 201, store
                assert retry.headers["idempotent-replayed"] == "true"
                assert retry.content == first.content
                assert rows(Api(client)) == (1 if store == "embedded" else 2)
        finally:
            if overrides:
                delete_prefix(overrides["redis_url"], prefix)


# A small app of the same parts: the real finance endpoint, and handlers that misbehave.
def _test_app(settings: Settings) -> Starlette:
    create_expense = finance.operations[0].endpoint
    failing = {"after_commit": True}

    async def crashes_after_commit(request: Request) -> Response:
        response = await create_expense(request)
        if failing["after_commit"]:
            failing["after_commit"] = False
            raise RuntimeError("the process died between the commit and the answer")
        return response

    async def located(request: Request) -> Response:
        await request.body()
        return Response(
            b'{"id": 7}',
            status_code=201,
            media_type="application/json",
            headers={"Location": "/things/7", "Set-Cookie": "session=abc", "X-Thing": "1"},
        )

    routes = [
        Route(PATH, crashes_after_commit, methods=["POST"]),
        Route("/things", located, methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = storage.create_engine(settings.database_url)
        await storage.migrate(engine)
        app.state.db = engine
        app.state.tokens = auth.Tokens("x" * 32, 3600)
        store, client = idempotency.open_store(settings, engine, app.state.idempotency_stats)
        app.state.idempotency = store
        yield
        if client is not None:
            await client.aclose()
        await engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(IdempotencyMiddleware, routes=routes)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.events = EventBus()
    app.state.idempotency_stats = idempotency.Stats()
    return app


@pytest.fixture(params=["embedded", "redis"])
def test_app(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[Api]:
    overrides: dict[str, Any] = {}
    prefix = f"test:idem:{uuid.uuid4().hex}:"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        overrides = {"redis_url": url, "idempotency_redis_prefix": prefix}
    settings = Settings(database_url=database_url, data_dir=str(tmp_path), **overrides)
    with TestClient(_test_app(settings), raise_server_exceptions=False) as client:
        yield Api(client)
    if overrides:
        delete_prefix(overrides["redis_url"], prefix)


def test_a_crash_after_the_commit_is_replayed_on_retry(test_app: Api) -> None:
    a = test_app.tenant("Acme")
    headers = keyed(a, new_key())
    crashed = test_app.client.post(PATH, json=expense(a), headers=headers)
    assert crashed.status_code == 500
    assert rows(test_app) == 1  # the write committed with its key's record
    retry = test_app.client.post(PATH, json=expense(a), headers=headers)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["amountCents"] == 50000
    assert rows(test_app) == 1


def test_a_replay_repeats_status_body_and_headers_but_never_cookies(test_app: Api) -> None:
    a = test_app.tenant("Acme")
    headers = {**keyed(a, new_key()), "Content-Type": "application/json"}
    first = test_app.client.post("/things", content=b"{}", headers=headers)
    assert first.status_code == 201
    assert first.headers["location"] == "/things/7"
    assert "set-cookie" in first.headers
    assert "idempotent-replayed" not in first.headers
    replay = test_app.client.post("/things", content=b"{}", headers=headers)
    assert replay.status_code == 201
    assert replay.content == first.content
    assert replay.headers["location"] == "/things/7"
    assert replay.headers["x-thing"] == "1"
    assert replay.headers["content-type"] == first.headers["content-type"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert "set-cookie" not in replay.headers


# A handler that outlives its lease: the first request is held inside its write transaction
# by a lock the test owns until its lease has lapsed and a second request has claimed the key.
@asynccontextmanager
async def _write_lock(api: Api, database_url: str, property_id: int) -> AsyncIterator[None]:
    if make_url(database_url).get_backend_name() == "sqlite":
        conn = sqlite3.connect(make_url(database_url).database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the database's one write lock
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    async with api.app.state.db.connect() as conn:
        tx = await conn.begin()
        # Inserting an expense takes a key-share lock on its property; this blocks it.
        await conn.execute(
            text("SELECT id FROM properties WHERE id = :p FOR UPDATE"), {"p": property_id}
        )
        try:
            yield
        finally:
            await tx.rollback()


CASES = [
    pytest.param("sqlite", "redis", id="sqlite-redis"),
    pytest.param("postgres", "embedded", id="postgres-embedded", marks=pytest.mark.postgres),
    pytest.param("postgres", "redis", id="postgres-redis", marks=pytest.mark.postgres),
]


@pytest.mark.parametrize(("dialect", "store"), CASES)
def test_a_handler_that_outlives_its_lease_cannot_write_twice(
    dialect: str, store: str, api_factory: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path}/lease.db"
    else:
        database_url = request.getfixturevalue("pg_database")  # rows are counted relatively
    overrides: dict[str, Any] = {"idempotency_lease_s": 0.4}
    prefix = f"test:idem:{uuid.uuid4().hex}:"
    if store == "redis":
        overrides |= {
            "redis_url": request.getfixturevalue("redis_url"),
            "idempotency_redis_prefix": prefix,
        }
    api = api_factory(database_url, **overrides)
    a = api.tenant(f"Lease{uuid.uuid4().hex[:8]}")
    before = rows(api)
    headers = keyed(a, new_key())

    stats = api.app.state.idempotency_stats
    lease_s = overrides["idempotency_lease_s"]

    async def until(check: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 20
        while not check():
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.01)

    async def scenario() -> tuple[httpx2.Response, httpx2.Response]:
        transport = httpx2.ASGITransport(app=api.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            async with _write_lock(api, database_url, a.property_id):
                claims = stats.claims
                first = asyncio.create_task(c.post(PATH, json=expense(a), headers=headers))
                await until(lambda: stats.claims == claims + 1, "the first request's claim")
                # Its lease started before the count moved: once lease_s has passed it lapsed.
                lapsed_at = asyncio.get_running_loop().time() + lease_s + 0.05
                await until(lambda: asyncio.get_running_loop().time() >= lapsed_at, "the lease")
                assert not first.done()  # held by the lock inside its transaction
                second = asyncio.create_task(c.post(PATH, json=expense(a), headers=headers))
                # The second claims the lapsed key and runs into the same lock.
                await until(lambda: stats.claims == claims + 2 or second.done(), "second claim")
                assert not second.done(), second.result().text
                assert not first.done()  # both handlers are running
            return await asyncio.wait_for(first, 20), await asyncio.wait_for(second, 20)

    try:
        first, second = api.run(scenario)
    finally:
        if store == "redis":
            delete_prefix(overrides["redis_url"], prefix)
    assert rows(api) == before + 1
    outcomes = sorted(
        (r.status_code, r.headers.get("idempotent-replayed", "no")) for r in (first, second)
    )
    assert outcomes[0] == (201, "no") or outcomes == [(201, "true"), (409, "no")], outcomes
    originals = [r for r in (first, second) if "idempotent-replayed" not in r.headers]
    replays = [r for r in (first, second) if r.headers.get("idempotent-replayed") == "true"]
    for r in (first, second):
        assert r.status_code in (201, 409), r.text
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_request_in_progress"
    assert len([r for r in originals if r.status_code == 201]) == 1
    assert all(r.content == originals[0].content for r in replays)
    assert api.app.state.idempotency_stats.backstop_hits == 1
