"""A client that goes away mid-body is the client's doing: not a 5xx, not an error in the log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.settings import Settings


def _drop_mid_body(client: TestClient, path: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    """Send half a JSON body, then the disconnect a server sees when the client drops."""
    queue: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"email": "user@exa', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 4000),
        "state": {},
    }

    async def receive() -> Any:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def run() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(run)  # type: ignore[union-attr]
    return sent


@pytest.mark.parametrize("idempotent", [False, True], ids=["login", "idempotent-write"])
def test_a_client_dropping_mid_body_is_logged_at_info_and_not_a_5xx(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, idempotent: bool
) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db", data_dir=str(tmp_path))
    app = create_app(settings)
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        if idempotent:
            from streamcore_server import accounts
            from streamcore_server.auth import Principal

            async def user() -> tuple[int, int]:  # a real one: tokens of unknown users are refused
                async with app.state.db.begin() as conn:
                    org = await accounts.create_org(conn, "Acme")
                    return await accounts.create_user(conn, org, "u@example.com", "pw-123456"), org

            uid, org = client.portal.call(user)  # type: ignore[union-attr]
            token = app.state.tokens.issue(Principal(uid, org, "u@example.com"))
            headers = [(b"authorization", f"Bearer {token}".encode()), (b"idempotency-key", b"k")]
            path = "/v1/finance/expenses"
        else:
            headers, path = [], "/auth/login"
        _drop_mid_body(client, path, headers)
        metrics = client.get("/metrics/aggregate").json()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    (line,) = [
        r
        for r in caplog.records
        if r.name == "streamcore_server.access" and getattr(r, "path", "") == path
    ]
    assert line.status == 499  # type: ignore[attr-defined]  # nginx's "client closed request"
    body = orjson.dumps(metrics).decode()
    assert '"5xx":1' not in body.replace(" ", "")
    statuses = {
        key: series.statuses
        for key, series in app.state.metrics.by_label.items()
        if any(series.statuses)
    }
    route = next(k for k in statuses if k[0] == path)
    assert statuses[route][5] == 0 and statuses[route][4] == 1, statuses
