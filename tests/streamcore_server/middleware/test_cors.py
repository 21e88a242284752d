"""The CORS allow-list: listed origins get CORS headers and credentials, others nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.settings import Settings

LISTED = "https://app.example.com"


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db", data_dir=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        yield client


def preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/v1/finance/expenses",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_three_trusted_origins_by_default() -> None:
    assert len(Settings().cors_origins) == 3
    assert all(o.startswith("https://") for o in Settings().cors_origins)


def test_a_listed_origin_preflight_is_allowed_with_credentials(client: TestClient) -> None:
    response = preflight(client, LISTED)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == LISTED
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "http://app.example.com", "https://app.example.com.evil", "null"],
)
def test_any_other_origin_gets_no_allow_origin(client: TestClient, origin: str) -> None:
    response = preflight(client, origin)
    assert response.status_code == 400
    assert not [h for h in response.headers if h.startswith("access-control-")]
    assert response.json()["error"] == {
        "code": "cors_rejected",
        "message": "CORS preflight refused.",
        "details": {"disallowed": ["origin"]},
    }
    simple = client.get("/healthz", headers={"Origin": origin})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-credentials" not in simple.headers


def test_a_listed_origin_can_read_errors_too(client: TestClient) -> None:
    response = client.get("/v1/finance/expenses", headers={"Origin": LISTED})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == LISTED
    assert response.headers["access-control-allow-credentials"] == "true"


def test_origins_come_from_the_setting(tmp_path: Any) -> None:
    settings = Settings.from_env(
        {
            "CORS_ORIGINS": "https://one.test, https://two.test/",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db",
            "DATA_DIR": str(tmp_path),
        }
    )
    with TestClient(create_app(settings)) as client:
        assert preflight(client, "https://two.test").headers["access-control-allow-origin"] == (
            "https://two.test"
        )
        assert "access-control-allow-origin" not in preflight(client, LISTED).headers
