"""The login throttle: per process without Redis, one count for every instance with REDIS_URL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_support import PASSWORD, Api
from idempotency_support import PrivateRedis, delete_prefix, private_redis

from streamcore_server.auth import SharedLoginThrottle


def login(api: Api, email: str, password: str) -> int:
    r = api.client.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code in (200, 401, 429), r.text
    if r.status_code == 429:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "too_many_requests"
    return r.status_code


def instance(api_factory: Any, tmp_path: Path, name: str, **settings: Any) -> Api:
    """An app of its own (its own database, its own process state), as another instance is."""
    api: Api = api_factory(
        f"sqlite+aiosqlite:///{tmp_path}/{name}.db", login_max_failures=5, **settings
    )
    return api


def redis_settings(url: str, prefix: str) -> dict[str, Any]:
    # Every key this test's apps write is under its own prefix on the shared server.
    return {
        "redis_url": url,
        "login_redis_prefix": f"{prefix}:login:",
        "realtime_redis_prefix": f"{prefix}:rt",
        "metrics_redis_prefix": f"{prefix}:metrics",
        "idempotency_redis_prefix": f"{prefix}:idem:",
    }


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test-throttle-{uuid.uuid4().hex[:8]}"
    yield name
    delete_prefix(redis_url, name)


def test_without_redis_each_process_counts_alone(api_factory: Any, tmp_path: Path) -> None:
    a, b = (instance(api_factory, tmp_path, n) for n in ("a", "b"))
    assert not isinstance(a.app.state.login_throttle, SharedLoginThrottle)
    assert [login(a, "who@example.com", "guess") for _ in range(6)] == [401] * 5 + [429]
    # The embedded default is unchanged: another process has a budget of its own.
    assert [login(b, "who@example.com", "guess") for _ in range(6)] == [401] * 5 + [429]


@pytest.mark.redis
def test_instances_on_one_redis_share_one_count(
    api_factory: Any, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    settings = redis_settings(redis_url, prefix)
    a, b, c = (instance(api_factory, tmp_path, n, **settings) for n in ("a", "b", "c"))
    assert isinstance(a.app.state.login_throttle, SharedLoginThrottle)
    # Five guesses spread over three instances use up the one budget...
    statuses = [login(api, "who@example.com", "guess") for api in (a, b, c, a, b)]
    assert statuses == [401] * 5
    for api in (a, b, c):  # ...and every instance now refuses, before checking a password
        assert login(api, "who@example.com", "guess") == 429
    # Another email, or the same one from elsewhere, is a count of its own.
    assert login(c, "other@example.com", "guess") == 401


@pytest.mark.redis
def test_a_success_clears_the_shared_count(
    api_factory: Any, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    settings = redis_settings(redis_url, prefix)
    a, b = (instance(api_factory, tmp_path, n, **settings) for n in ("a", "b"))
    user = b.tenant("Acme")  # lives in b's database
    assert [login(a, user.email, "guess") for _ in range(4)] == [401] * 4
    assert login(b, user.email, PASSWORD) == 200
    # The four failures are gone from Redis: a has five guesses again, counted with b's.
    assert [login(a, user.email, "guess") for _ in range(3)] == [401] * 3
    assert [login(b, user.email, "guess") for _ in range(2)] == [401] * 2
    assert login(a, user.email, "guess") == 429


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def test_redis_down_falls_back_to_the_process_count(
    api_factory: Any,
    tmp_path: Path,
    redis_server: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = instance(api_factory, tmp_path, "a", redis_url=redis_server.url)
    user = api.tenant("Acme")
    assert [login(api, "who@example.com", "guess") for _ in range(2)] == [401] * 2
    assert redis_server.client().keys("streamcore:login:*")  # counted in Redis
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="streamcore_server.auth"):
        # Logins go on without Redis (no 5xx), and the process's own count, which saw the two
        # failures before the outage, still stops the sixth guess.
        assert login(api, user.email, PASSWORD) == 200
        assert [login(api, "who@example.com", "guess") for _ in range(3)] == [401] * 3
        assert login(api, "who@example.com", "guess") == 429
    outage = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(outage) == 1  # once per outage, not once per login
    redis_server.start()  # back, and empty: logins are answered as before, never a 5xx
    assert login(api, user.email, PASSWORD) == 200


@pytest.mark.redis
def test_the_keys_name_no_email(
    api_factory: Any, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    import redis

    api = instance(api_factory, tmp_path, "a", **redis_settings(redis_url, prefix))
    assert login(api, "secret.person@example.com", "guess") == 401
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.keys(f"{prefix}:login:*")]
        assert len(keys) == 1
        assert "secret" not in keys[0] and "example" not in keys[0]
        ttl = client.pttl(keys[0])
        assert 0 < ttl <= 300_000  # expires with the window: no key outlives its failures
    finally:
        client.close()
