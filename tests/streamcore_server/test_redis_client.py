"""The breaker both Redis users share: skip Redis after a failure, log once per incident."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from streamcore_server.redis_client import Breaker, is_error

# A served app (its lifespan, a login, a keyed write, health), then the redis modules loaded.
_SERVE_AND_LIST_REDIS = """
import json, sys
from starlette.testclient import TestClient
from streamcore_server.main import create_app
from streamcore_server.settings import Settings
data, redis_url = sys.argv[1], sys.argv[2] or None
settings = Settings(
    database_url=f"sqlite+aiosqlite:///{data}/db.sqlite", data_dir=data, redis_url=redis_url
)
with TestClient(create_app(settings)) as client:
    login = {"email": "a@example.com", "password": "x" * 12}
    codes = [
        client.post("/auth/login", json=login).status_code,
        client.post("/v1/finance/expenses", json={}, headers={"Idempotency-Key": "k"}).status_code,
        client.get("/healthz").status_code,
    ]
loaded = sorted(m for m in sys.modules if m == "redis" or m.startswith("redis."))
print(json.dumps([codes, loaded]))
"""


def _serve(tmp_path: Path, redis_url: str) -> tuple[list[int], list[str]]:
    run = [sys.executable, "-c", _SERVE_AND_LIST_REDIS, str(tmp_path), redis_url]
    out = subprocess.run(run, capture_output=True, text=True, check=True, timeout=120).stdout
    codes, loaded = json.loads(out.splitlines()[-1])
    return codes, loaded


def test_a_server_without_redis_never_loads_redis_py(tmp_path: Path) -> None:
    codes, loaded = _serve(tmp_path, "")
    assert codes == [401, 401, 200]
    assert loaded == []  # about 6 MB resident in every process that imports it


@pytest.mark.redis
def test_a_server_with_redis_loads_it(tmp_path: Path, redis_url: str) -> None:
    codes, loaded = _serve(tmp_path, redis_url)
    assert codes == [401, 401, 200]
    assert "redis.asyncio" in loaded


def test_is_error_knows_redis_errors_only() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert is_error(RedisConnectionError("gone"))
    assert not is_error(ConnectionError("not redis-py's"))


def test_a_failure_pauses_redis_and_an_incident_logs_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.breaker")
    now = [100.0]
    breaker = Breaker(log, "down", "up", clock=lambda: now[0])
    assert breaker.usable()
    with caplog.at_level(logging.WARNING, "test.breaker"):
        breaker.failed(ConnectionError(), 0.05)
        breaker.failed(TimeoutError(), 0.01)  # a shorter pause never shortens the one running
        assert not breaker.usable()
        now[0] += 0.03
        assert not breaker.usable()
        now[0] += 0.03
        assert breaker.usable()
        breaker.ok()
        breaker.ok()
    assert [r.getMessage() for r in caplog.records] == ["down", "up"]
    assert caplog.records[0].error == "ConnectionError"  # type: ignore[attr-defined]
